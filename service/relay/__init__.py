"""Alertmanager -> DingTalk relay: signed markdown messages, merged and truncated to DingTalk's limits.

Public API: `RelaySettings` (the `relay:` config section), `build_relay_app(settings, *, registry)`
and `serve(settings)`.
"""

from service.relay.app import build_relay_app
from service.relay.server import serve
from service.relay.settings import MentionSettings, RelaySettings, RobotSettings, RouteSettings

__all__ = ["MentionSettings", "RelaySettings", "RobotSettings", "RouteSettings", "build_relay_app", "serve"]
