// @grpc/grpc-js: open a session (OpenSession, a server stream held open), add a refuse
// fault bound to it, see the port refuse, print "ready ID" and wait to be killed; faultd
// removes the fault when the stream dies with the process. Usage: node session.js ADDR PORT
'use strict';

const { grpc, client, call, refused, check, refuseSpec, PERMISSION_DENIED_EXIT } =
  require('./faultd');

async function main() {
  const [addr, portText] = process.argv.slice(2);
  const port = Number(portText);
  const stub = client(addr);
  const stream = stub.OpenSession({ name: `node pid ${process.pid}` });
  const sessionId = await new Promise((resolve, reject) => {
    stream.once('data', (event) => resolve(event.session_id));
    stream.once('error', (err) => {
      if (err.code === grpc.status.PERMISSION_DENIED) {
        process.stderr.write(err.details + '\n');
        process.exit(PERMISSION_DENIED_EXIT);
      }
      reject(err);
    });
  });
  const fault = await call(stub, 'AddFault', { spec: refuseSpec(port), session_id: sessionId });
  check(fault.session_id === sessionId, `bound to session ${sessionId}: ${fault.session_id}`);
  check(await refused(port), 'the fault does not refuse connections');
  console.log(`ready ${fault.id}`);
  setInterval(() => {}, 1 << 30); // until killed
}

main().catch((err) => {
  process.stderr.write(`FAILED: ${err.stack || err}\n`);
  process.exit(1);
});
