"""Drives the playground in headless Chromium over the DevTools protocol.

Usage: playground_check.py PATH/TO/latentd CHROMIUM

A server with an API key and two fixture models (text-to-image and unconditional): the
playground asks for the key on 401 and keeps it for the tab, a seed above 2^53 typed as
digits comes back exactly in the PNG's recorded parameters, a double click runs one job,
an unconditional model hides and omits the prompt, and Cancel stops a long job.
"""
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


binary, browser = sys.argv[1], sys.argv[2]
PORT, CDP = free_port(), free_port()
profile = tempfile.mkdtemp(prefix="latentd-playground-")
server = subprocess.Popen([binary, "serve", "--port", str(PORT), "--api-key", "secret",
    "--model", f"sd={FIXTURES / 'sd1-tiny'}", "--model", f"faces={FIXTURES / 'ldm-tiny'}"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
chrome = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--remote-debugging-port={CDP}", f"--user-data-dir={profile}", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health"); urllib.request.urlopen(f"http://127.0.0.1:{CDP}/json/version"); break
        except Exception: time.sleep(0.2)
    req = urllib.request.Request(f"http://127.0.0.1:{CDP}/json/new?http://127.0.0.1:{PORT}/", method="PUT")
    target = json.load(urllib.request.urlopen(req))
    ws = websocket.create_connection(target["webSocketDebuggerUrl"])
    n = [0]
    def ev(expr):
        n[0] += 1
        ws.send(json.dumps({"id": n[0], "method": "Runtime.evaluate", "params": {"expression": expr, "awaitPromise": True, "returnByValue": True}}))
        while True:
            m = json.loads(ws.recv())
            if m.get("id") == n[0]:
                return m["result"]["result"].get("value")
    def wait(expr, secs=30):
        for _ in range(int(secs * 10)):
            v = ev(expr)
            if v: return v
            time.sleep(0.1)
        status, error = ev('$("status").textContent'), ev('$("error").textContent')
        raise SystemExit(f"timed out waiting for {expr}: status={status} error={error}")
    print("401 shown:", wait('document.readyState === "complete" && $("error").textContent.includes("API key") && $("error").textContent'))
    ev('form.api_key.value = "secret"; form.api_key.dispatchEvent(new Event("change")); true')
    print("models:", wait('form.model.options.length === 2 && [...form.model.options].map(o => o.value).join(",")'))
    print("schedulers:", ev('form.scheduler.options.length'))
    seed = "5144162125717175227"
    ev(f'form.seed.value = "{seed}"; form.steps.value = "3"; form.generate.click(); form.generate.click(); true')
    print("disabled while running:", ev('form.generate.disabled'))
    wait('$("status").textContent.startsWith("done")')
    figs = ev('$("images").querySelectorAll("figure").length')
    cap = ev('$("images").querySelector("figcaption").textContent')
    src = ev('$("images").querySelector("img").src')
    png = base64.b64decode(src.split(",", 1)[1])
    pos, meta = 8, None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8]); data = png[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and data.startswith(b"latentd\x00"): meta = json.loads(data[8:])
        pos += 12 + length
    print("figures:", figs, "| caption:", cap, "| PNG seed:", meta and meta["seed"])
    assert figs == 1 and seed in cap and str(meta["seed"]) == seed, "seed or double-click check failed"
    print("session key kept:", ev('sessionStorage.getItem("latentd_api_key")'))
    # img2img: the image just made as the input, strength 0.5, through the file input.
    input_png = os.path.join(profile, "input.png")
    with open(input_png, "wb") as f: f.write(png)
    def cdp(method, **params):
        n[0] += 1
        ws.send(json.dumps({"id": n[0], "method": method, "params": params}))
        while True:
            m = json.loads(ws.recv())
            if m.get("id") == n[0]:
                return m.get("result", {})
    root = cdp("DOM.getDocument")["root"]["nodeId"]
    node = cdp("DOM.querySelector", nodeId=root, selector='input[name="image"]')["nodeId"]
    cdp("DOM.setFileInputFiles", nodeId=node, files=[input_png])
    print("image field shown:", not ev('form.image.closest("label").classList.contains("hidden")'))
    ev('form.strength.value = "0.5"; form.steps.value = "4"; form.generate.click(); true')
    wait('$("status").textContent.startsWith("done")')
    src = ev('$("images").querySelector("img").src')
    edited = base64.b64decode(src.split(",", 1)[1])
    pos, meta = 8, None
    while pos < len(edited):
        length, kind = struct.unpack(">I4s", edited[pos:pos + 8]); data = edited[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and data.startswith(b"latentd\x00"): meta = json.loads(data[8:])
        pos += 12 + length
    print("img2img strength:", meta and meta.get("strength"), "| input:", meta and meta.get("input_image"))
    assert meta and meta.get("strength") == 0.5 and meta.get("input_image"), "img2img from the playground failed"
    ev('form.image.value = ""; form.strength.value = ""; true')
    # An unconditional model: the prompt field is hidden and not sent.
    ev('form.model.value = "faces"; form.model.dispatchEvent(new Event("change")); true')
    print("prompt hidden:", ev('form.prompt.closest("label").classList.contains("hidden")'))
    ev('form.seed.value = ""; form.steps.value = "2"; form.generate.click(); true')
    wait('$("status").textContent.startsWith("done")')
    print("faces:", ev('$("status").textContent'), "| error:", repr(ev('$("error").textContent')))
    assert ev('$("error").textContent') == "", "the unconditional model's job failed"
    # Cancel a long job.
    ev('form.model.value = "sd"; form.model.dispatchEvent(new Event("change")); form.n.value = "8"; form.steps.value = "150"; form.generate.click(); true')
    wait('$("status").textContent.startsWith("step")')
    ev('form.cancel.click(); true')
    print("after cancel:", wait('$("status").textContent === "cancelled" && $("status").textContent'))
    print("playground: ok")
finally:
    chrome.kill(); server.kill()
