// token.mjs - use tokenkeeper from Node.js with the stock NATS clients
// (@nats-io/transport-node, @nats-io/kv); no tokenkeeper code involved.
//
//   node token.mjs NATS_URL APP [BUCKET]
//
// 1. Reads APP's record from the KV bucket (default "tokens") and prints
//    {"app","revision","access_token_len"}.
// 2. Tells the refresher that the token at that revision was rejected:
//    requests token.refresh.APP with {"stale_revision": revision} and
//    prints {"app","refreshed_revision","refreshed","access_token_len"}:
//    refreshed is false when the refresher answered with the token we
//    already hold (a forced refresh of this app ran less than
//    passive_min_interval ago).
// 3. If the bucket holds APP's JS-SDK ticket (key APP.jsapi, kept when
//    the refresher's config lists tickets: [jsapi] for APP), reads it and
//    prints {"key","revision","ticket_len"}, then asks the refresher to
//    sign a page URL (token.sign.APP with {"url": SIGN_URL}, default
//    https://shop.example/item?id=7#reviews) and prints the reply
//    {"appId","timestamp","nonceStr","signature"} plus "url" and
//    "signature_ok": whether SHA-1 over jsapi_ticket=…&noncestr=…&
//    timestamp=…&url=… (url without its #fragment) with the ticket read
//    in step 3 gives the same signature. A page only needs the reply (it
//    goes into wx.config); a service that only signs needs no read of the
//    bucket at all, only publish on token.sign.>.
//
// A real service does step 1 at startup (and follows updates with
// kv.watch), and step 2 only when the upstream rejects its token
// (WeChat errcode 40001, 40014 or 42001). It never prints the token:
// only its length.
//
// Authentication, all optional, from the environment: NATS_USER and
// NATS_PASSWORD, or NATS_TOKEN, or NATS_CREDS (a .creds file).
// NATS_INBOX_PREFIX sets a private inbox prefix (replies to this service
// travel on PREFIX.>, so its permissions can be "subscribe PREFIX.>").
//
// Exit status: 0 ok, 1 failure (reason on stderr), 2 usage error.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect, credsAuthenticator, errors } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";

const [url, app, bucket = "tokens"] = process.argv.slice(2);
if (!url || !app) {
  console.error("usage: node token.mjs NATS_URL APP [BUCKET]");
  process.exit(2);
}

/** Connection options from the environment. */
function connectOptions() {
  const env = process.env;
  const opts = { servers: url.split(","), name: "tokenkeeper-node-example" };
  if (env.NATS_USER) {
    opts.user = env.NATS_USER;
    opts.pass = env.NATS_PASSWORD ?? "";
  } else if (env.NATS_TOKEN) {
    opts.token = env.NATS_TOKEN;
  } else if (env.NATS_CREDS) {
    opts.authenticator = credsAuthenticator(readFileSync(env.NATS_CREDS));
  }
  if (env.NATS_INBOX_PREFIX) {
    opts.inboxPrefix = env.NATS_INBOX_PREFIX;
  }
  return opts;
}

/** Reads APP's record: the stored JSON object and its KV revision. */
async function readToken(nc) {
  // tokenkeeper's buckets allow direct gets: with allow_direct the client
  // reads with $JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<app> and needs
  // no other JetStream API (open() binds without a request).
  const kv = await new Kvm(nc).open(bucket, { allow_direct: true });
  let entry;
  try {
    entry = await kv.get(app);
  } catch (err) {
    if (err instanceof errors.RequestError && err.isNoResponders()) {
      throw new Error(`bucket ${bucket} not found: is a refresher running against this NATS?`);
    }
    throw err;
  }
  if (entry === null || entry.operation !== "PUT") {
    throw new Error(`no token stored for app ${app} in bucket ${bucket}`);
  }
  return { record: entry.json(), revision: entry.revision };
}

/** Reads APP's jsapi ticket record, or null if the bucket holds none. */
async function readTicket(nc) {
  const kv = await new Kvm(nc).open(bucket, { allow_direct: true });
  const entry = await kv.get(`${app}.jsapi`);
  if (entry === null || entry.operation !== "PUT") {
    return null;
  }
  return { record: entry.json(), revision: entry.revision };
}

/** Throws the micro error reply of reply, if it is one. */
function checkReply(reply, what) {
  const code = reply.headers?.get("Nats-Service-Error-Code");
  if (code) {
    let message = reply.headers.get("Nats-Service-Error");
    try {
      message = reply.json().error.message;
    } catch {
      // keep the header's message
    }
    throw new Error(`${what} failed: ${code} ${message}`);
  }
}

/**
 * Asks any refresher replica for the wx.config signature of pageURL: the
 * reply is {"appId","timestamp","nonceStr","signature"}.
 */
async function sign(nc, pageURL) {
  const subject = `token.sign.${app}`;
  let reply;
  try {
    reply = await nc.request(subject, JSON.stringify({ url: pageURL }), { timeout: 10_000 });
  } catch (err) {
    if (err instanceof errors.RequestError && err.isNoResponders()) {
      throw new Error(`no refresher is serving ${subject}`);
    }
    throw err;
  }
  checkReply(reply, `signing for ${app}`);
  return reply.json();
}

/** The JS-SDK signature: hex SHA-1 of the string WeChat documents. */
function jssdkSignature(ticket, nonceStr, timestamp, pageURL) {
  const url = pageURL.split("#")[0];
  const s = `jsapi_ticket=${ticket}&noncestr=${nonceStr}&timestamp=${timestamp}&url=${url}`;
  return createHash("sha1").update(s).digest("hex");
}

/**
 * Asks the refresher for a token newer than staleRevision. The reply is
 * the record plus "revision"; a failure is a micro error reply: headers
 * Nats-Service-Error-Code / Nats-Service-Error and a JSON body
 * {"error":{"code","message"}}.
 */
async function refreshToken(nc, staleRevision) {
  const subject = `token.refresh.${app}`;
  let reply;
  try {
    reply = await nc.request(subject, JSON.stringify({ stale_revision: staleRevision }), {
      timeout: 30_000, // the refresher may wait for one upstream fetch
    });
  } catch (err) {
    if (err instanceof errors.RequestError && err.isNoResponders()) {
      // During a leader handover nobody serves the subject for up to the
      // lease TTL: a real service retries with backoff.
      throw new Error(`no refresher is serving ${subject}`);
    }
    throw err;
  }
  checkReply(reply, `refresh of ${app}`);
  return reply.json();
}

const nc = await connect(connectOptions()).catch((err) => {
  console.error(`cannot connect to NATS: ${err.message}`);
  process.exit(1);
});
try {
  const { record, revision } = await readToken(nc);
  console.log(JSON.stringify({ app: record.app, revision, access_token_len: record.access_token.length }));

  const reply = await refreshToken(nc, revision);
  console.log(
    JSON.stringify({
      app: reply.app,
      refreshed_revision: reply.revision,
      refreshed: reply.revision > revision,
      access_token_len: reply.access_token.length,
    }),
  );

  const ticket = await readTicket(nc);
  if (ticket !== null) {
    console.log(JSON.stringify({ key: ticket.record.key, revision: ticket.revision, ticket_len: ticket.record.ticket.length }));
    const pageURL = process.env.SIGN_URL || "https://shop.example/item?id=7#reviews";
    const cfg = await sign(nc, pageURL);
    const ok = jssdkSignature(ticket.record.ticket, cfg.nonceStr, cfg.timestamp, pageURL) === cfg.signature;
    console.log(JSON.stringify({ ...cfg, url: pageURL, signature_ok: ok }));
  }
} catch (err) {
  console.error(err.message);
  process.exitCode = 1;
} finally {
  await nc.drain();
}
