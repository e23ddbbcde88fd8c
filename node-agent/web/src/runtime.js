// @ts-check
// webaccel's in-page runtime: serves the agent over a loopback WebSocket and runs its
// requests on one or more onnxruntime-web instances. Tensors arrive and leave as binary
// frames (frame.js); control messages (load, unload, ping) are JSON text (protocol.js),
// handled in page.js. The agent supervises this page through the pings: a page that
// stops answering is declared hung and restarted.
//
// Page workers: onnxruntime-web runs one request at a time per instance, so a page with
// one instance uses one request's worth of the machine however many cores it has. With
// `workers` > 1 the page starts that many Web Workers, each with its own instance and
// its own sessions of every loaded model (executors.js), and hands each request to a
// free one. With one worker the instance lives in this thread: no hop between threads.

import { detectAll } from './capabilities.js';
import { now } from './clock.js';
import { LocalExecutor, WorkerExecutor } from './executors.js';
import { createPage } from './page.js';

const params = new URLSearchParams(location.search);
const config = {
  threads: Number(params.get('threads') || 0),
  build: params.get('build') || 'plain',
  workers: Math.max(1, Number(params.get('workers') || 1)),
  // How long a worker may leave a call unanswered before it is declared hung and
  // replaced: the agent's own bounds for the page (--hang-timeout, --load-hang-timeout).
  hangMs: Number(params.get('hang_ms') || 10000),
  loadHangMs: Number(params.get('load_hang_ms') || 120000),
};

const ws = new WebSocket(`ws://${location.host}/page/ws?s=${encodeURIComponent(String(params.get('s')))}`);
ws.binaryType = 'arraybuffer';

/** @param {string} url */
const fetchModel = async (url) => {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`fetching the model from the agent failed: HTTP ${resp.status}`);
  return new Uint8Array(await resp.arrayBuffer());
};

const page = createPage({
  send: (event) => ws.send(JSON.stringify(event)),
  sendFrame: (frame) => ws.send(frame),
  fetchModel,
  workers: config.workers,
  threads: config.threads,
  now,
});

ws.onopen = async () => {
  const capabilities = await detectAll();
  const executors = config.workers === 1
    ? [new LocalExecutor(0, config, capabilities, page.hooks)]
    : Array.from({ length: config.workers }, (_, i) => new WorkerExecutor(i, config, capabilities, page.hooks));
  await page.start(executors, capabilities);
  setInterval(page.checkHung, 250);
};
ws.onclose = () => { document.title = 'webaccel: disconnected'; };

ws.onmessage = (ev) => {
  if (typeof ev.data === 'string') {
    page.onControl(JSON.parse(ev.data));
  } else {
    page.onFrame(ev.data);
  }
};
