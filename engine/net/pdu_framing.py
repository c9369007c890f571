"""PDU framing (PS3.8 9.3): the byte stream of an association in, PDU events out.

Sans-I/O, so the association state machine and the tests drive it with plain
bytes.  The compiled twin (ext/pdu_framing.pyx) runs unless
ENGINE_NO_EXTENSIONS=1 selects the pure-Python reference
(engine/net/_pdu_framing_py.py); both behave identically.
"""
from engine._native import load_twin

_impl, IMPLEMENTATION = load_twin("engine.net._pdu_framing_c", "engine.net._pdu_framing_py")
PDUFramer = _impl.PDUFramer
encode_p_data = _impl.encode_p_data
