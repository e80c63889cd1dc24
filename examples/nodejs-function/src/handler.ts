/**
 * Lambda entry point (Handler: handler.handler): Function URL / API Gateway events to Hono,
 * each invocation traced with the OpenTelemetry SDK and flushed to the sidecar before the
 * response (src/telemetry.ts).
 */
import { handle } from "hono/aws-lambda";
import { app } from "./app.js";
import { traced } from "./telemetry.js";

const serve = handle(app);

export const handler = (...[event, context]: Parameters<typeof serve>): ReturnType<typeof serve> =>
  traced(context?.awsRequestId ?? "", () => serve(event, context));
