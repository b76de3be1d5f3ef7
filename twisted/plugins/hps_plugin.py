"""The ``twistd hps`` plugin. Imports hps only when the command is used.

No ``__init__.py`` beside this file: ``twisted/plugins`` is Twisted's plugin
namespace, and the reactor must not be imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.application.service import MultiService

    from hps.config import Options


@implementer(IServiceMaker, IPlugin)
class PluginServerMaker:
    tapname = "hps"
    description = "Higress plugin server: serve WebAssembly plugins to Higress gateways."

    def options(self) -> Options:
        from hps.config import Options

        return Options()

    def makeService(self, options: Options) -> MultiService:
        from hps.service import make_service

        return make_service(options.config)


serviceMaker = PluginServerMaker()
