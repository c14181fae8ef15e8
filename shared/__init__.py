"""What the three Clearhouse services share: runtime, database, errors, money, contracts."""

import os
import sys

# The generated protobuf modules import each other by their proto package
# (`clearhouse.type.v1`), so their folder must be an import root wherever `shared` is.
_PROTO_GEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto_gen")
if _PROTO_GEN not in sys.path:
    sys.path.append(_PROTO_GEN)
