/** Lambda entry point (Handler: handler.handler): Function URL / API Gateway events to Hono. */
import { handle } from "hono/aws-lambda";
import { app } from "./app.js";

export const handler = handle(app);
