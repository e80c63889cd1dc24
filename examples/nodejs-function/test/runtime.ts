// A Lambda runtime for the example, as lambda-env's runtime process (`--runtime`): the
// Runtime API loop Lambda's Node.js runtime runs, calling the example's handler with a
// Function URL event (`GET /get-auth-token`) per invocation, with `_X_AMZN_TRACE_ID` set from
// the invocation's `Lambda-Runtime-Trace-Id`, as the real runtime sets it.
import { handler } from "../src/handler.js";

const api = `http://${process.env.AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime`;

function event(path: string) {
  const host = "abcdefghij.lambda-url.us-east-1.on.aws";
  return {
    version: "2.0",
    routeKey: "$default",
    rawPath: path,
    rawQueryString: "",
    headers: { host },
    requestContext: {
      accountId: "123456789012",
      apiId: "abcdefghij",
      domainName: host,
      domainPrefix: "abcdefghij",
      http: { method: "GET", path, protocol: "HTTP/1.1", sourceIp: "192.0.2.1", userAgent: "lambda-env" },
      requestId: "lambda-env",
      routeKey: "$default",
      stage: "$default",
      time: "27/Nov/2026:02:00:00 +0000",
      timeEpoch: Date.now(),
    },
    isBase64Encoded: false,
  };
}

for (;;) {
  const next = await fetch(`${api}/invocation/next`);
  if (!next.ok) break;
  const requestId = next.headers.get("lambda-runtime-aws-request-id") ?? "";
  process.env._X_AMZN_TRACE_ID = next.headers.get("lambda-runtime-trace-id") ?? "";
  await next.text();
  const context = {
    awsRequestId: requestId,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME ?? "",
    getRemainingTimeInMillis: () => 10_000,
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const result = await handler(event("/get-auth-token") as any, context as any);
  await fetch(`${api}/invocation/${requestId}/response`, { method: "POST", body: JSON.stringify(result) });
}
