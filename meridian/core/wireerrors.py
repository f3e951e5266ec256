"""The Meridian errors whose class a gRPC status code alone does not carry across the wire.

A status code names a branch of the error tree (``PERMISSION_DENIED``: ``PermissionDenied``);
a few subclasses matter to callers in their own right: a residency refusal is not a missing
role, and a flow body or a script may catch one and not the other. The control plane names
such an error's kind in the trailing metadata :data:`ERROR_KIND_KEY`, next to the status code
(``control_plane/api/errors.py``); clients raise that subclass again (``meridian/rpcerrors.py``).
One table for both sides (decision 0013). Pure: no gRPC here.
"""

from __future__ import annotations

from meridian.core.errors import MeridianError
from meridian.core.residency import ResidencyRefused

ERROR_KIND_KEY = "meridian-error-kind"

# Most specific first, like the status code table.
KINDS: tuple[tuple[str, type[MeridianError]], ...] = (("residency-refused", ResidencyRefused),)


def kind_of(exc: BaseException) -> str:
    """The kind the control plane names for ``exc`` ("" when its status code says it all)."""
    for kind, cls in KINDS:
        if isinstance(exc, cls):
            return kind
    return ""


def refine(error: MeridianError, kind: str) -> MeridianError:
    """``error`` (mapped from its status code) as the subclass ``kind`` names, same message.

    A kind only ever narrows what the status code said: an unknown kind (a newer control
    plane) or one that is not a subclass of ``error``'s class leaves ``error`` as it is.
    """
    for name, cls in KINDS:
        if name == kind and issubclass(cls, type(error)):
            return cls(*error.args)
    return error
