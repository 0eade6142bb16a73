// k6 "pairs": each pair is one visitor socket and one agent socket on different pods
// in the same conversation (WRITERS=a, the default: every visitor on pod A, so one pod
// does every write; WRITERS=both: even pairs' visitors on pod A, odd pairs' on pod B,
// as a gateway spreading sockets would place them); every visitor sends one ~100-byte message per PERIOD ms;
// the agent side measures end-to-end latency (send -> delivered over the other pod).
import { WebSocket } from "k6/experimental/websockets";
import { Counter, Trend } from "k6/metrics";
import { SharedArray } from "k6/data";
import exec from "k6/execution";

const pairs = new SharedArray("pairs", () => JSON.parse(open(__ENV.PAIRS_FILE)));
const PER_VU = parseInt(__ENV.PAIRS_PER_VU || "25");
const PERIOD = parseInt(__ENV.PERIOD_MS || "1000");
const DURATION = parseInt(__ENV.SEND_SECONDS || "30") * 1000;
// Every pair starts sending at START_AT (epoch ms), after all sockets are open,
// so the connection ramp does not pollute the steady-state numbers.
const START_AT = parseInt(__ENV.START_AT || "0");
const SETTLE = parseInt(__ENV.SETTLE_MS || "5000");
const PAD = "x".repeat(60);

const latency = new Trend("e2e_latency", true);
// send -> the sender's ack (the message is committed on its shard): the write path alone.
const ackLatency = new Trend("ack_latency", true);
const sent = new Counter("msgs_sent");
const acked = new Counter("msgs_acked");
const delivered = new Counter("msgs_delivered");
const duplicates = new Counter("msgs_duplicate");
const errors = new Counter("ws_errors");
const opened = new Counter("ws_opened");

export const options = {
  scenarios: {
    pairs: {
      executor: "per-vu-iterations",
      vus: parseInt(__ENV.VUS || "1"),
      iterations: 1,
      maxDuration: `${Math.ceil((DURATION + SETTLE) / 1000) + 180}s`,
    },
  },
  summaryTrendStats: ["min", "avg", "med", "p(90)", "p(95)", "p(99)", "max"],
};

const ONE_WRITER_POD = (__ENV.WRITERS || "a") === "a";

function pair(p, state, index) {
  const flip = !ONE_WRITER_POD && index % 2 === 1;
  const visitorPod = flip ? __ENV.POD_B : __ENV.POD_A;
  const agentPod = flip ? __ENV.POD_A : __ENV.POD_B;
  const visitor = new WebSocket(`${visitorPod}/ws?ticket=${p.visitor_ticket}`);
  const agent = new WebSocket(`${agentPod}/ws?ticket=${p.agent_ticket}`);
  const seen = new Set();
  const sentAt = new Map(); // client_msg_id -> send time, until its ack
  let n = 0;
  let timer = null;
  let ready = 0;

  function start() {
    ready += 1;
    if (ready < 2) return;
    // Spread the pairs' sends over the period so the load is steady, not bursty.
    const offset = Math.floor(Math.random() * PERIOD);
    const begin = Math.max(START_AT, Date.now());
    setTimeout(() => {
      timer = setInterval(() => {
        if (Date.now() - begin > DURATION) {
          clearInterval(timer);
          return;
        }
        n += 1;
        const clientMsgId = `${p.conversation_id}:${n}`;
        sentAt.set(clientMsgId, Date.now());
        visitor.send(JSON.stringify({
          type: "send", conversation_id: p.conversation_id,
          client_msg_id: clientMsgId,
          body: `${Date.now()}|${PAD}`,
        }));
        sent.add(1);
      }, PERIOD);
    }, begin - Date.now() + offset);
  }

  visitor.onopen = () => {
    opened.add(1);
    visitor.send(JSON.stringify({ type: "subscribe", conversation_id: p.conversation_id, after_seq: 0 }));
  };
  agent.onopen = () => {
    opened.add(1);
    agent.send(JSON.stringify({ type: "subscribe", conversation_id: p.conversation_id, after_seq: 0 }));
  };
  visitor.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.type === "subscribed") start();
    else if (f.type === "ack") {
      acked.add(1);
      const at = sentAt.get(f.client_msg_id);
      if (at !== undefined) {
        ackLatency.add(Date.now() - at);
        sentAt.delete(f.client_msg_id);
      }
    }
    else if (f.type === "error") errors.add(1);
  };
  // The agent follows docs/protocol.md: it keeps the highest contiguous seq and
  // fetches what it missed on a gap or a resync, so "lost" means really lost.
  let highest = 0;
  let fetching = false;
  function keep(m) {
    if (seen.has(m.seq)) { duplicates.add(1); return; }
    seen.add(m.seq);
    delivered.add(1);
    latency.add(Date.now() - parseInt(m.body.split("|")[0]));
    if (m.seq > highest + 1 && !fetching) fetch();
    while (seen.has(highest + 1)) highest += 1;
  }
  function fetch() {
    fetching = true;
    agent.send(JSON.stringify({ type: "fetch", conversation_id: p.conversation_id, after_seq: highest, limit: 500 }));
  }
  agent.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.type === "subscribed") start();
    else if (f.type === "message") keep(f.message);
    else if (f.type === "messages") {
      fetching = false;
      for (const m of f.messages) keep(m);
      if (f.more) fetch();
    } else if (f.type === "resync") fetch();
    else if (f.type === "error") errors.add(1);
  };
  visitor.onerror = () => errors.add(1);
  agent.onerror = () => errors.add(1);
  setTimeout(() => { visitor.close(); agent.close(); },
    Math.max(START_AT - Date.now(), 0) + DURATION + SETTLE + PERIOD);
}

export default function () {
  const vu = exec.vu.idInTest - 1;
  const state = {};
  for (let i = vu * PER_VU; i < Math.min((vu + 1) * PER_VU, pairs.length); i++) {
    pair(pairs[i], state, i);
  }
}
