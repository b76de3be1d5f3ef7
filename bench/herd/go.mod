module hps/bench/herd

go 1.19
