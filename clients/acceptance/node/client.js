// @grpc/grpc-js: add a refuse fault, see the port refuse, list it (owner root), remove it,
// see the port accept. Usage: node client.js ADDR PORT
'use strict';

const { client, call, refused, check, refuseSpec } = require('./faultd');

async function main() {
  const [addr, portText] = process.argv.slice(2);
  const port = Number(portText);
  const stub = client(addr);
  check(!(await refused(port)), 'refused before any fault');
  const fault = await call(stub, 'AddFault', { spec: refuseSpec(port) });
  check(await refused(port), 'the fault does not refuse connections');
  const { faults } = await call(stub, 'ListFaults', {});
  const listed = faults.filter((f) => f.id === fault.id);
  check(listed.length === 1 && listed[0].owner.uid === 0,
    `listed with owner root: ${JSON.stringify(listed)}`);
  await call(stub, 'RemoveFault', { id: fault.id });
  check(!(await refused(port)), 'still refused after removal');
  stub.close();
  console.log('ok');
}

main().catch((err) => {
  process.stderr.write(`FAILED: ${err.stack || err}\n`);
  process.exit(1);
});
