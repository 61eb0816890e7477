#!/usr/bin/env python3
"""lb_demo.py: balance plain TCP requests with lb's C ABI through ctypes.

    LB_FFI_LIB=/path/to/liblb_ffi.so python3 lb_demo.py <target> <options_json> <requests> <threads>

The Python twin of lb_demo.c: each request picks an endpoint, connects, sends "ping\\n", reads a
line and reports the outcome ("ok" is a success) with the latency measured here. Prints how many
requests each endpoint served for ffi/tests/python_example.rs, after walking the error contract
once (exit status 2 if the library breaks it).
"""
import ctypes
import json
import os
import socket
import sys
import threading
import time

LB_ADDR_LEN, LB_IP_LEN, LB_LABEL_LEN, LB_NODE_LEN = 64, 48, 64, 256

# lb_status values (include/lb.h)
LB_OK, LB_ERR_NULL_ARGUMENT, LB_ERR_INVALID_UTF8, LB_ERR_INVALID_TARGET = 0, 1, 2, 3
LB_ERR_INVALID_OPTIONS, LB_ERR_INVALID_ARGUMENT, LB_ERR_UNAVAILABLE = 5, 6, 8
LB_ERR_UNKNOWN_TOKEN, LB_ERR_TOKEN_SPENT = 9, 10
# lb_outcome values
LB_OUTCOME_SUCCESS, LB_OUTCOME_FAILURE, LB_OUTCOME_CANCELLED = 0, 1, 2


class LbPick(ctypes.Structure):
    """Mirror of `struct lb_pick` in include/lb.h (same field order and sizes)."""

    _fields_ = [
        ("token", ctypes.c_uint64),
        ("port", ctypes.c_uint16),
        ("addr", ctypes.c_char * LB_ADDR_LEN),
        ("ip", ctypes.c_char * LB_IP_LEN),
        ("region", ctypes.c_char * LB_LABEL_LEN),
        ("zone", ctypes.c_char * LB_LABEL_LEN),
        ("node", ctypes.c_char * LB_NODE_LEN),
    ]


def load(path):
    lib = ctypes.CDLL(path)
    b = ctypes.c_void_p
    lib.lb_version.restype = ctypes.c_char_p
    lib.lb_version.argtypes = []
    lib.lb_last_error_message.restype = ctypes.c_size_t
    lib.lb_last_error_message.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.lb_balancer_new.restype = ctypes.c_int
    lib.lb_balancer_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(b)]
    lib.lb_balancer_wait_ready.restype = ctypes.c_int
    lib.lb_balancer_wait_ready.argtypes = [b, ctypes.c_uint64]
    lib.lb_balancer_pick.restype = ctypes.c_int
    lib.lb_balancer_pick.argtypes = [b, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(LbPick)]
    lib.lb_balancer_report.restype = ctypes.c_int
    lib.lb_balancer_report.argtypes = [b, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64]
    lib.lb_balancer_endpoints.restype = ctypes.c_int
    lib.lb_balancer_endpoints.argtypes = [b, ctypes.POINTER(ctypes.c_void_p)]
    lib.lb_string_free.restype = None
    lib.lb_string_free.argtypes = [ctypes.c_void_p]
    lib.lb_balancer_free.restype = None
    lib.lb_balancer_free.argtypes = [b]
    return lib


def last_error(lib):
    n = lib.lb_last_error_message(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    lib.lb_last_error_message(buf, n + 1)
    return buf.value.decode()


def expect(lib, what, got, want):
    if got != want:
        print(f"contract broken: {what} returned {got}, expected {want} ({last_error(lib)})", file=sys.stderr)
        sys.exit(2)


def request(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=5) as s:
            s.sendall(b"ping\n")
            data = b""
            while b"\n" not in data:
                chunk = s.recv(16)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"ok\n")
    except OSError:
        return False


def check_error_contract(lib, bal):
    out = ctypes.c_void_p()
    expect(lib, "new(NULL target)", lib.lb_balancer_new(None, None, ctypes.byref(out)), LB_ERR_NULL_ARGUMENT)
    expect(lib, "new(malformed JSON)", lib.lb_balancer_new(b"static:///127.0.0.1:1", b"[1,", ctypes.byref(out)),
           LB_ERR_INVALID_OPTIONS)
    expect(lib, "new(invalid UTF-8)", lib.lb_balancer_new(b"static:///\xff", None, ctypes.byref(out)), LB_ERR_INVALID_UTF8)
    expect(lib, "pick(NULL out)", lib.lb_balancer_pick(bal, None, 0, None), LB_ERR_NULL_ARGUMENT)
    expect(lib, "pick(NULL key, len 3)", lib.lb_balancer_pick(bal, None, 3, ctypes.byref(LbPick())), LB_ERR_NULL_ARGUMENT)
    pick = LbPick()
    key = b"user-42"
    expect(lib, "pick(key)", lib.lb_balancer_pick(bal, key, len(key), ctypes.byref(pick)), LB_OK)
    expect(lib, "report(bad outcome)", lib.lb_balancer_report(bal, pick.token, 9, -1), LB_ERR_INVALID_ARGUMENT)
    expect(lib, "report(first)", lib.lb_balancer_report(bal, pick.token, LB_OUTCOME_CANCELLED, -1), LB_OK)
    expect(lib, "report(twice)", lib.lb_balancer_report(bal, pick.token, LB_OUTCOME_SUCCESS, -1), LB_ERR_TOKEN_SPENT)
    expect(lib, "report(unknown)", lib.lb_balancer_report(bal, 7, LB_OUTCOME_SUCCESS, -1), LB_ERR_UNKNOWN_TOKEN)
    print("last_error", last_error(lib))


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 1
    target, options, requests, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    lib = load(os.environ.get("LB_FFI_LIB", "liblb_ffi.so"))
    print("version", lib.lb_version().decode())

    bal = ctypes.c_void_p()
    st = lib.lb_balancer_new(target.encode(), options.encode(), ctypes.byref(bal))
    if st != LB_OK:
        print(f"lb_balancer_new: {st}: {last_error(lib)}", file=sys.stderr)
        return 1
    try:
        st = lib.lb_balancer_wait_ready(bal, 5000)
        if st != LB_OK:
            print(f"lb_balancer_wait_ready: {st}: {last_error(lib)}", file=sys.stderr)
            return 1
        check_error_contract(lib, bal)

        served, failed, unavailable = {}, {}, [0]
        lock = threading.Lock()

        def worker(n):
            for _ in range(n):
                pick = LbPick()
                st = lib.lb_balancer_pick(bal, None, 0, ctypes.byref(pick))
                if st == LB_ERR_UNAVAILABLE:
                    with lock:
                        unavailable[0] += 1
                    continue
                expect(lib, "pick", st, LB_OK)
                start = time.monotonic()
                ok = request(pick.ip.decode(), pick.port)
                latency_us = int((time.monotonic() - start) * 1e6)
                outcome = LB_OUTCOME_SUCCESS if ok else LB_OUTCOME_FAILURE
                expect(lib, "report", lib.lb_balancer_report(bal, pick.token, outcome, latency_us), LB_OK)
                addr = pick.addr.decode()
                with lock:
                    served[addr] = served.get(addr, 0) + 1
                    failed[addr] = failed.get(addr, 0) + (0 if ok else 1)

        ts = [threading.Thread(target=worker, args=(requests // threads + (1 if i < requests % threads else 0),))
              for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for addr in sorted(served):
            print(f"served {addr} {served[addr]} failed {failed[addr]}")
        print("unavailable", unavailable[0])

        out = ctypes.c_void_p()
        expect(lib, "endpoints", lib.lb_balancer_endpoints(bal, ctypes.byref(out)), LB_OK)
        try:
            doc = json.loads(ctypes.string_at(out.value).decode())
        finally:
            lib.lb_string_free(out)
        print("endpoints", json.dumps(doc))
    finally:
        lib.lb_balancer_free(bal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
