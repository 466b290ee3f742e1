"""The predecessor's Python gRPC client pattern, run against our worker.

Stubs are generated from proto/tts.proto with grpcio-tools, exactly as a
Python client of the old system would have them. The calls mirror its
TTSWorkerClient: GetCapabilities on connect, StartSession, Synthesize with a
list of chunks (the last is_final), Control, ListModels, LoadModel,
EndSession. Run by `just test-compat` (scripts/compat-test).

Usage: predecessor_client.py HOST:PORT STUB_DIR
"""

import sys
import time

import grpc

addr, stub_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, stub_dir)
import tts_pb2  # noqa: E402
import tts_pb2_grpc  # noqa: E402

FRAME_BYTES = 48000 * 20 // 1000 * 2
passed, failed = 0, 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def wait_ready(channel):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
            return
        except grpc.FutureTimeoutError:
            pass
    raise SystemExit(f"worker at {addr} not reachable")


with grpc.insecure_channel(addr) as channel:
    wait_ready(channel)
    stub = tts_pb2_grpc.TTSServiceStub(channel)

    caps = stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest())
    check("GetCapabilities streaming", caps.capabilities.streaming)
    check("GetCapabilities resident models", "mock" in caps.resident_models, caps.resident_models)

    models = stub.ListModels(tts_pb2.ListModelsRequest()).models
    check("ListModels", any(m.model_id == "mock" and m.is_loaded for m in models), models)

    r = stub.StartSession(tts_pb2.StartSessionRequest(session_id="py-1", model_id="mock", options={"speed": "1.0"}))
    check("StartSession", r.success, r.message)

    chunks = ["Hello from the ", "old Python client."]
    req = (
        tts_pb2.TextChunk(session_id="py-1", text=t, is_final=(i == len(chunks) - 1), sequence_number=i + 1)
        for i, t in enumerate(chunks)
    )
    frames = list(stub.Synthesize(req))
    check("Synthesize returns frames", len(frames) > 10, len(frames))
    check("frames are 20 ms at 48 kHz", all(f.sample_rate == 48000 and f.frame_duration_ms == 20 for f in frames))
    check("frames are 1920 bytes", all(len(f.audio_data) == FRAME_BYTES for f in frames[:-1]))
    check("exactly one is_final, last", [f.is_final for f in frames].count(True) == 1 and frames[-1].is_final)
    check("sequence numbers contiguous from 1", [f.sequence_number for f in frames] == list(range(1, len(frames) + 1)))

    r = stub.Control(tts_pb2.ControlRequest(session_id="py-1", command=tts_pb2.PAUSE))
    check("Control PAUSE", r.success and r.timestamp_ms > 0, r.message)
    r = stub.Control(tts_pb2.ControlRequest(session_id="py-1", command=tts_pb2.RESUME))
    check("Control RESUME", r.success, r.message)
    r = stub.Control(tts_pb2.ControlRequest(session_id="py-1", command=tts_pb2.STOP))
    check("Control STOP", r.success, r.message)

    # STOP is not sticky: the session speaks again.
    again = list(stub.Synthesize(iter([tts_pb2.TextChunk(session_id="py-1", text="Again.", is_final=True)])))
    check("speaks after STOP", len(again) > 5 and again[-1].is_final, len(again))

    try:
        stub.Control(tts_pb2.ControlRequest(session_id="nobody", command=tts_pb2.PAUSE))
        check("unknown session is NOT_FOUND", False, "no error")
    except grpc.RpcError as e:
        check("unknown session is NOT_FOUND", e.code() == grpc.StatusCode.NOT_FOUND, e.code())

    r = stub.LoadModel(tts_pb2.LoadModelRequest(model_id="mock"))
    check("LoadModel", r.success, r.message)
    r = stub.EndSession(tts_pb2.EndSessionRequest(session_id="py-1"))
    check("EndSession", r.success)

print(f"compat: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
