// The Socket.IO 4 side of bench/peers.py: one node process of a two-node cluster that
// shares a Redis through the official @socket.io/redis-adapter, as Socket.IO's docs
// recommend for more than one process. HAProxy sits in front (consistent hash on the
// user id), so a user's connection always lands on the same node.
//
// The same application as wsop's, in Socket.IO's idiom: every connection joins the room
// of its user and the rooms of its teams (tenant-scoped, like wsop's keys); "direct"
// emits to the recipient's user room, "team" to the team rooms after checking that the
// sender is a member (wsop's `forbidden`); both answer with a Socket.IO acknowledgement
// carrying the message id (wsop's `ack`). Settings: WebSocket transport only (the client
// never long-polls), no compression, bufferutil installed (Socket.IO's performance
// tuning page), everything else at its default.
//
//   node server.js --name n0 --port 0 --redis redis://127.0.0.1:6379/0
//
// Prints `listening PORT` once the adapter is connected and the port is bound; the
// Engine.IO session id starts with the node's name, so a client can tell where it landed.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

async function main() {
  const name = option("name", "n0");
  const port = Number(option("port", "0"));
  const redisUrl = option("redis", "redis://127.0.0.1:6379/0");

  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) {
    client.on("error", (err) => process.stderr.write(`redis: ${err.message}\n`));
  }
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    adapter: createAdapter(pub, sub),
  });
  let sessions = 0;
  io.engine.generateId = () => `${name}-${++sessions}`;

  io.on("connection", (socket) => {
    const query = socket.handshake.query;
    const tenant = String(query.tenant || "t");
    const user = Number(query.user);
    const teams = query.teams ? String(query.teams).split(",") : [];
    socket.join(`u:${tenant}:${user}`);
    for (const team of teams) socket.join(`t:${tenant}:${team}`);

    socket.on("direct", (msg, ack) => {
      if (!msg || typeof ack !== "function") return;
      io.to(`u:${tenant}:${msg.to}`).emit("message", {
        from: user,
        data: msg.data,
        id: msg.id,
        ts: Date.now(),
      });
      ack(msg.id);
    });

    socket.on("team", (msg, ack) => {
      if (!msg || !Array.isArray(msg.teams) || typeof ack !== "function") return;
      const rooms = msg.teams.map((team) => `t:${tenant}:${team}`);
      if (!rooms.every((room) => socket.rooms.has(room))) {
        ack({ error: "forbidden", id: msg.id });
        return;
      }
      io.to(rooms).emit("message", {
        from: user,
        teams: msg.teams,
        data: msg.data,
        id: msg.id,
        ts: Date.now(),
      });
      ack(msg.id);
    });
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  // the idle-memory row asks for a full collection before each RSS reading (node runs
  // with --expose-gc): V8 would otherwise free its start-up heap mid-measurement
  process.on("SIGUSR2", () => global.gc && global.gc());

  httpServer.listen(port, "127.0.0.1", () => {
    process.stdout.write(`listening ${httpServer.address().port}\n`);
  });
}

main().catch((err) => {
  process.stderr.write(`server.js: ${err.stack || err}\n`);
  process.exit(1);
});
