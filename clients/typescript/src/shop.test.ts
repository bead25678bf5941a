// The shop's view, against a real stock node (NODE_URL; clients/typescript/run.sh
// starts one on loopback): every call goes through the client generated from the
// checked-in OpenAPI document, so a document that is not true to the node fails here.
import assert from "node:assert/strict";
import { test } from "node:test";
import { shop } from "./shop.js";

const url = process.env.NODE_URL;
if (url === undefined) throw new Error("NODE_URL is not set");
const node = shop(url);

test("a shop sells through the generated client: buy, replay, confirm, sold out", async () => {
  const before = await node.items();
  const cap = before.find((i) => i.sku === "cap");
  assert.ok(cap, "the sale has a cap");
  assert.equal(cap.sold + cap.held + cap.remaining, cap.stock);

  const first = await node.buy("cap", 2, "ada", "ts-order-1");
  assert.equal(first.status, 201, JSON.stringify(first.problem));
  assert.ok(first.order);
  assert.equal(first.order.state, "reserved");
  assert.equal(first.order.idempotencyKey, "ts-order-1");
  assert.equal(first.replayed, false);

  // The same key again is the same order, marked as a replay.
  const again = await node.buy("cap", 2, "ada", "ts-order-1");
  assert.equal(again.status, 201);
  assert.equal(again.order?.id, first.order.id);
  assert.equal(again.replayed, true);

  // Confirm as the customer; another customer does not see the order.
  const confirmed = await node.confirm(first.order.id, "ada");
  assert.equal(confirmed.status, 200);
  assert.equal(confirmed.order?.state, "confirmed");
  assert.ok((confirmed.order?.confirmedAtMs ?? 0) >= first.order.createdAtMs, "confirmedAtMs");
  const other = await node.order(first.order.id, "mallory");
  assert.equal(other.status, 404);
  assert.equal(other.problem?.code, "unknown_order");

  // The rest of the caps, then one too many: a problem with the stable code, no retry.
  const rest = (await node.items()).find((i) => i.sku === "cap")?.remaining ?? 0;
  for (let i = 0; i < rest; i++) {
    const a = await node.buy("cap", 1, `buyer-${i}`, `ts-rest-${i}`);
    assert.equal(a.status, 201, JSON.stringify(a.problem));
  }
  const late = await node.buy("cap", 1, "late", "ts-late");
  assert.equal(late.status, 409);
  assert.equal(late.problem?.code, "sold_out");
  assert.equal(late.problem?.status, 409);
  assert.equal(late.problem?.type, "tag:flashsale.dev,2026:problem/sold_out");
  assert.equal(late.retryAfterS, undefined, "sold out is final: no Retry-After");
  const after = (await node.items()).find((i) => i.sku === "cap");
  assert.equal(after?.remaining, 0);
  assert.equal(after?.sold, 2, "only the confirmed order is sold; the rest are held");
});

test("a bad request is a problem naming the field; an unknown item is 404", async () => {
  const bad = await node.buyOnce("tee", 0, "ada", "ts-zero");
  assert.equal(bad.status, 422);
  assert.equal(bad.problem?.code, "bad_quantity");
  assert.equal(bad.problem?.field, "quantity");
  const unknown = await node.item("no-such-thing");
  assert.ok("code" in unknown);
  assert.equal(unknown.code, "unknown_item");
});
