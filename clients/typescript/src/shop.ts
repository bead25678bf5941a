// A shop's client for a flashsale stock node, typed from the node's OpenAPI document
// (node/openapi.json → src/schema.d.ts by openapi-typescript) and sent with
// openapi-fetch. What a shop back-end would write: buy with an idempotency key, retry
// what a retry can cure, confirm as the customer.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type Order = components["schemas"]["Order"];
export type ItemView = components["schemas"]["ItemView"];
/** Every error: an RFC 9457 problem with the node's stable `code`. */
export type Problem = components["schemas"]["ErrorBody"];

/** One answer to a purchase: the order, or the problem; and what the headers said. */
export interface Answer {
  status: number;
  order?: Order;
  problem?: Problem;
  replayed: boolean;
  retryAfterS?: number;
}

export function shop(baseUrl: string) {
  const client = createClient<paths>({ baseUrl });
  const answer = (
    response: Response,
    order: Order | undefined,
    problem: Problem | undefined,
  ): Answer => {
    const retry = response.headers.get("Retry-After");
    return {
      status: response.status,
      order,
      problem,
      replayed: response.headers.get("Idempotent-Replayed") === "true",
      retryAfterS: retry === null ? undefined : Number(retry),
    };
  };
  return {
    async items(): Promise<ItemView[]> {
      const { data, error } = await client.GET("/v1/items");
      if (error !== undefined || data === undefined) throw new Error(`items: ${error?.code}`);
      return data;
    },

    async item(sku: string): Promise<ItemView | Problem> {
      const { data, error } = await client.GET("/v1/items/{sku}", { params: { path: { sku } } });
      return data ?? (error as Problem);
    },

    /** One attempt: the key goes in the `Idempotency-Key` header (a structured-field string). */
    async buyOnce(sku: string, quantity: number, customer: string, key: string): Promise<Answer> {
      const { data, error, response } = await client.POST("/v1/purchases", {
        params: { header: { "Idempotency-Key": JSON.stringify(key) } },
        body: { sku, quantity, customer },
      });
      return answer(response, data, error);
    },

    /**
     * Buys, retrying with the same key what a retry can cure (an answer with
     * `Retry-After`), at most `attempts` times: the same key never buys twice.
     */
    async buy(sku: string, quantity: number, customer: string, key: string, attempts = 5): Promise<Answer> {
      let last = await this.buyOnce(sku, quantity, customer, key);
      for (let i = 1; i < attempts && last.retryAfterS !== undefined && last.status >= 500; i++) {
        await new Promise((r) => setTimeout(r, Math.min(last.retryAfterS ?? 1, 2) * 1000));
        last = await this.buyOnce(sku, quantity, customer, key);
      }
      return last;
    },

    async confirm(id: number, customer: string): Promise<Answer> {
      const { data, error, response } = await client.POST("/v1/orders/{id}/confirm", {
        params: { path: { id }, header: { "Flashsale-Customer": customer } },
      });
      return answer(response, data, error);
    },

    async order(id: number, customer: string): Promise<Answer> {
      const { data, error, response } = await client.GET("/v1/orders/{id}", {
        params: { path: { id }, header: { "Flashsale-Customer": customer } },
      });
      return answer(response, data, error);
    },
  };
}
