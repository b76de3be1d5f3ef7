// Command herd: N clients built like the Higress gateway's Wasm fetcher fetch one URL at once.
//
// Each client has its own connection (its own gateway), asks with Go's default
// client behaviour (Accept-Encoding: gzip added and undone by the transport), gives
// each attempt -timeout (15 s), retries 5xx and network errors up to -attempts (5)
// times with a back-off from -backoff (0.5 s) doubling, and verifies the SHA-256 of
// the un-gzipped body against -sha256. It prints one JSON line: how many verified,
// how many failed, attempts, errors by kind, and wall time.
//
//	go build -o /tmp/herd ./bench/herd
//	/tmp/herd -url https://127.0.0.1:8443/plugins/p4mb/1.0.0/plugin.wasm -sha256 HEX -proto h2
//
// Standard library only. Meant for 127.0.0.1: it skips certificate checks.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

type outcome struct {
	ok       bool
	attempts int
	errors   []string
	took     time.Duration
}

func transport(proto string) *http.Transport {
	t := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   proto == "h2",
	}
	if proto == "h1" {
		// A non-nil empty map turns HTTP/2 off (net/http's documented switch).
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return t
}

// kind names an error for the histogram, without addresses or numbers.
func kind(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "connection reset"):
		return "reset"
	case strings.Contains(err.Error(), "EOF"):
		return "eof"
	case strings.Contains(err.Error(), "stream error"):
		return "stream_error"
	case strings.Contains(err.Error(), "sha256"):
		return "checksum"
	}
	return "other"
}

// fetch is one attempt: (retryable, error).
func fetch(client *http.Client, url, want, proto string) (bool, error) {
	resp, err := client.Get(url)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	if proto == "h2" && resp.ProtoMajor != 2 || proto == "h1" && resp.ProtoMajor != 1 {
		return false, fmt.Errorf("wrong protocol %s", resp.Proto)
	}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		code := resp.StatusCode
		retry := code >= 500 && code != 501 && code != 505 && code != 511
		return retry, fmt.Errorf("status %d", code)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, resp.Body); err != nil {
		return true, err
	}
	if got := hex.EncodeToString(sum.Sum(nil)); want != "" && got != want {
		return false, fmt.Errorf("sha256 %s, want %s", got, want)
	}
	return false, nil
}

func gateway(url, want, proto string, timeout, backoff time.Duration, attempts int) outcome {
	client := &http.Client{Timeout: timeout, Transport: transport(proto)}
	defer client.CloseIdleConnections()
	began := time.Now()
	out := outcome{}
	wait := backoff
	for out.attempts < attempts {
		out.attempts++
		retry, err := fetch(client, url, want, proto)
		if err == nil {
			out.ok = true
			break
		}
		out.errors = append(out.errors, kind(err))
		if !retry {
			break
		}
		// A fresh connection per attempt, as a timed-out Go client leaves its stream or
		// connection to be torn down.
		client.CloseIdleConnections()
		time.Sleep(wait)
		wait *= 2
	}
	out.took = time.Since(began)
	return out
}

func main() {
	url := flag.String("url", "", "the URL every client fetches (https://127.0.0.1:...)")
	want := flag.String("sha256", "", "hex SHA-256 of the un-gzipped body")
	n := flag.Int("n", 1000, "clients")
	proto := flag.String("proto", "h2", "h2 (HTTP/2, what Go picks on https) or h1 (HTTP/1.1)")
	timeout := flag.Duration("timeout", 15*time.Second, "per attempt")
	attempts := flag.Int("attempts", 5, "attempts per client")
	backoff := flag.Duration("backoff", 500*time.Millisecond, "first back-off, doubling")
	flag.Parse()
	if *url == "" || (*proto != "h2" && *proto != "h1") {
		flag.Usage()
		os.Exit(2)
	}
	began := time.Now()
	results := make([]outcome, *n)
	var wg sync.WaitGroup
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = gateway(*url, *want, *proto, *timeout, *backoff, *attempts)
		}(i)
	}
	wg.Wait()
	wall := time.Since(began)
	verified, tries := 0, 0
	errs := map[string]int{}
	var took []float64
	for _, r := range results {
		tries += r.attempts
		for _, e := range r.errors {
			errs[e]++
		}
		if r.ok {
			verified++
			took = append(took, r.took.Seconds())
		}
	}
	sort.Float64s(took)
	pick := func(q float64) float64 {
		if len(took) == 0 {
			return 0
		}
		return took[int(q*float64(len(took)-1))]
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"clients": *n, "proto": *proto, "verified": verified, "failed": *n - verified,
		"attempts": tries, "errors": errs, "seconds": wall.Seconds(),
		"p50": pick(0.5), "p99": pick(0.99),
	})
}
