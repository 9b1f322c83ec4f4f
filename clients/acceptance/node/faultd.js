// What the Node programs of the acceptance matrix share: faultd's API loaded from proto/
// with @grpc/proto-loader, a client for an address (host:port or unix:/path), the exit code
// for PERMISSION_DENIED, and what an application observes of a refuse fault.
'use strict';

const path = require('path');
const net = require('net');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PERMISSION_DENIED_EXIT = 3;
const PROTO_DIR = path.join(__dirname, '..', '..', '..', 'proto');

function client(addr) {
  const definition = protoLoader.loadSync(path.join(PROTO_DIR, 'faultd/v1/faultd.proto'), {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const api = grpc.loadPackageDefinition(definition).faultd.v1;
  const options = addr.startsWith('unix:') ? { 'grpc.default_authority': 'localhost' } : {};
  return new api.FaultService(addr, grpc.credentials.createInsecure(), options);
}

// One unary call as a promise; PERMISSION_DENIED ends the process with its message.
function call(stub, method, request) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + 10000 }, (err, reply) => {
      if (err && err.code === grpc.status.PERMISSION_DENIED) {
        process.stderr.write(err.details + '\n');
        process.exit(PERMISSION_DENIED_EXIT);
      }
      if (err) reject(err);
      else resolve(reply);
    });
  });
}

// Whether a new connection to 127.0.0.1:port is refused while a listener is there.
function refused(port) {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => socket.destroy());
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
      const socket = net.connect({ host: '127.0.0.1', port });
      const done = (result) => {
        socket.destroy();
        server.close(() => resolve(result));
      };
      socket.on('connect', () => done(false));
      socket.on('error', (err) => {
        if (err.code === 'ECONNREFUSED') done(true);
        else server.close(() => reject(err));
      });
    });
    server.on('error', reject);
  });
}

function check(condition, what) {
  if (!condition) {
    process.stderr.write(`FAILED: ${what}\n`);
    process.exit(1);
  }
}

function refuseSpec(port) {
  return {
    target: { port, protocol: 'PROTOCOL_TCP' },
    action: { refuse: { mode: 'REFUSE_MODE_RST' } },
  };
}

module.exports = { PERMISSION_DENIED_EXIT, client, call, refused, check, refuseSpec, grpc };
