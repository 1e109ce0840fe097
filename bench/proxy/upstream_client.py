# Minimal websocket client for the proxy benchmark: identifies as app "perf"
# with ip=127.0.0.1:18080 (the nginx upstream), then idles for the given seconds.
import base64, json, os, socket, struct, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /gateway/websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
def frame(text):
    data = text.encode(); mask = os.urandom(4)
    head = bytes([0x81]) + (bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(data)))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
time.sleep(0.2)
s.recv(65536)
s.sendall(frame(json.dumps({"op": 1, "d": {"client_id": "upstream", "application_id": "perf", "ip": "127.0.0.1:18080"}})))
time.sleep(0.2)
print("identified:", s.recv(65536)[:80], flush=True)
time.sleep(secs)
