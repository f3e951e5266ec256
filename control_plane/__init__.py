"""Meridian's control plane: stores flows, runs and their history; schedules steps onto agents."""

from control_plane.admin import create_api_token, create_join_token
from control_plane.config import ServerConfig
from control_plane.server import ControlPlane

__all__ = ["ControlPlane", "ServerConfig", "create_api_token", "create_join_token"]
