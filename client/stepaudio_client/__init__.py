"""Python client SDK of the Step-Audio serving gateway."""

from stepaudio_client.client import GatewayClient, TurnResult

__all__ = ["GatewayClient", "TurnResult"]
