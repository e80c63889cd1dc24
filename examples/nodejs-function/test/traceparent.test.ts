// Unit tests of the X-Ray -> W3C traceparent mapping.
import { afterEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { currentTraceparent, traceparentFromXRay } from "../src/traceparent.js";

const ROOT = "1-5759e988-bd862e3fe1be46a994272793";
const TRACE_ID = "5759e988bd862e3fe1be46a994272793";
const PARENT = "53995c3f42cd8ad8";

describe("traceparentFromXRay", () => {
  it("joins the root's hex parts into the trace id and keeps Parent as the span id", () => {
    assert.equal(traceparentFromXRay(`Root=${ROOT};Parent=${PARENT};Sampled=1`), `00-${TRACE_ID}-${PARENT}-01`);
  });

  it("maps Sampled=0, Sampled=? and a missing Sampled to flags 00", () => {
    for (const s of [";Sampled=0", ";Sampled=?", ""]) {
      assert.equal(traceparentFromXRay(`Root=${ROOT};Parent=${PARENT}${s}`), `00-${TRACE_ID}-${PARENT}-00`, s);
    }
  });

  it("accepts fields in any order, with spaces and extra fields (Lineage)", () => {
    const header = ` Sampled=1 ; Lineage=a87bd80c:1|68fd508a:5 ;Parent=${PARENT}; Root=${ROOT}`;
    assert.equal(traceparentFromXRay(header), `00-${TRACE_ID}-${PARENT}-01`);
  });

  it("gives nothing when a part is missing or malformed", () => {
    const bad = [
      undefined,
      "",
      `Root=${ROOT};Sampled=1`, // no Parent
      `Parent=${PARENT};Sampled=1`, // no Root
      `Root=2-5759e988-bd862e3fe1be46a994272793;Parent=${PARENT}`, // unknown version
      `Root=1-5759e98-bd862e3fe1be46a994272793;Parent=${PARENT}`, // short time part
      `Root=1-5759e988-bd862e3fe1be46a99427279z;Parent=${PARENT}`, // not hex
      `Root=${ROOT};Parent=53995c3f42cd8ad`, // short parent
      `Root=1-00000000-000000000000000000000000;Parent=${PARENT}`, // all-zero trace id
      `Root=${ROOT};Parent=0000000000000000`, // all-zero span id
    ];
    for (const h of bad) assert.equal(traceparentFromXRay(h), undefined, String(h));
  });
});

describe("currentTraceparent", () => {
  const saved = process.env._X_AMZN_TRACE_ID;
  afterEach(() => {
    if (saved === undefined) delete process.env._X_AMZN_TRACE_ID;
    else process.env._X_AMZN_TRACE_ID = saved;
  });

  it("prefers Lambda's _X_AMZN_TRACE_ID over the request header", () => {
    process.env._X_AMZN_TRACE_ID = `Root=${ROOT};Parent=${PARENT};Sampled=1`;
    const other = "Root=1-11111111-222222222222222222222222;Parent=3333333333333333;Sampled=0";
    assert.equal(currentTraceparent(other), `00-${TRACE_ID}-${PARENT}-01`);
  });

  it("falls back to the request header when the variable is absent", () => {
    delete process.env._X_AMZN_TRACE_ID;
    const header = "Root=1-11111111-222222222222222222222222;Parent=3333333333333333;Sampled=0";
    assert.equal(currentTraceparent(header), "00-11111111222222222222222222222222-3333333333333333-00");
    assert.equal(currentTraceparent(undefined), undefined);
  });
});
