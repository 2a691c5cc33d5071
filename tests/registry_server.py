"""A minimal Confluent-compatible schema registry over HTTP, for tests only.

No registry can run here, so this stands at that boundary; the project's code
talks to it through confluent-kafka's real SchemaRegistryClient over HTTP.
Compatibility is BACKWARD for records: every field the new schema adds needs
a default, and no field may change its type.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Registry:
    def __init__(self):
        self.schemas: list[str] = []            # id - 1 -> schema string
        self.subjects: dict[str, list[int]] = {}  # subject -> ids by version

    def id_of(self, schema: str) -> int:
        canon = json.dumps(json.loads(schema), sort_keys=True)
        for i, s in enumerate(self.schemas):
            if json.dumps(json.loads(s), sort_keys=True) == canon:
                return i + 1
        self.schemas.append(schema)
        return len(self.schemas)

    def compatible(self, subject: str, schema: str) -> bool:
        latest = json.loads(self.schemas[self.subjects[subject][-1] - 1])
        new = json.loads(schema)
        old_fields = {f["name"]: f for f in latest.get("fields", [])}
        for f in new.get("fields", []):
            if f["name"] not in old_fields and "default" not in f:
                return False
            if f["name"] in old_fields and json.dumps(old_fields[f["name"]]["type"], sort_keys=True) != \
                    json.dumps(f["type"], sort_keys=True):
                return False
        return True


def serve(registry: Registry) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:2] == ["schemas", "ids"] and len(parts) >= 3:
                i = int(parts[2])
                if 0 < i <= len(registry.schemas):
                    return self._send(200, {"schema": registry.schemas[i - 1], "schemaType": "AVRO"})
                return self._send(404, {"error_code": 40403, "message": "Schema not found"})
            if parts[0] == "subjects" and len(parts) == 4 and parts[2] == "versions":
                ids = registry.subjects.get(parts[1])
                if not ids:
                    return self._send(404, {"error_code": 40401, "message": "Subject not found"})
                v = len(ids) if parts[3] == "latest" else int(parts[3])
                i = ids[v - 1]
                return self._send(200, {"subject": parts[1], "id": i, "version": v,
                                        "schema": registry.schemas[i - 1], "schemaType": "AVRO"})
            return self._send(404, {"error_code": 404, "message": "not found"})

        def do_POST(self):
            parts = self.path.split("?")[0].strip("/").split("/")
            body = self._body()
            if parts[0] == "subjects" and len(parts) == 2:  # lookup
                ids = registry.subjects.get(parts[1], [])
                canon = json.dumps(json.loads(body["schema"]), sort_keys=True)
                for v, i in enumerate(ids, 1):
                    if json.dumps(json.loads(registry.schemas[i - 1]), sort_keys=True) == canon:
                        return self._send(200, {"subject": parts[1], "id": i, "version": v,
                                                "schema": registry.schemas[i - 1]})
                code = 40403 if ids else 40401
                return self._send(404, {"error_code": code, "message": "not found"})
            if parts[0] == "subjects" and parts[2:] == ["versions"]:
                i = registry.id_of(body["schema"])
                ids = registry.subjects.setdefault(parts[1], [])
                if i not in ids:
                    ids.append(i)
                return self._send(200, {"id": i})
            if parts[0] == "compatibility":
                subject = parts[2]
                if subject not in registry.subjects:
                    return self._send(404, {"error_code": 40401, "message": "Subject not found"})
                return self._send(200, {"is_compatible": registry.compatible(subject, body["schema"])})
            return self._send(404, {"error_code": 404, "message": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
