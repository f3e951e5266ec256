"""What the control plane, the agent, the SDK and step processes share, and nothing else.

Errors, label selectors, sealing, secret references, code bundles and the typed vocabulary
(step specs, error information, the state, report, verdict, event and approval enums) with the
one converter to and from ``common.proto``. Modules here import no SDK, CLI, control-plane or
agent module (checked by the import contracts in ``pyproject.toml``); import the submodule you
need: this file imports nothing, so a step process pays only for what it uses.
"""
