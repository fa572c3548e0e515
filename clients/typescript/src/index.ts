// @archipel/client: the generated messages and @grpc/grpc-js clients of Archipel's API
// (src/gen/, from proto/ by generate.sh), and a few helpers to call them.
import { Metadata, type ClientReadableStream } from "@grpc/grpc-js";

// The objects (archipel.v1alpha1): the same in both versions of the services.
export * as cluster from "./gen/archipel/v1alpha1/cluster.js";
export * as interpreter from "./gen/archipel/v1alpha1/interpreter.js";
export * as meta from "./gen/archipel/v1alpha1/meta.js";
export * as override from "./gen/archipel/v1alpha1/override.js";
export * as policy from "./gen/archipel/v1alpha1/policy.js";
export * as work from "./gen/archipel/v1alpha1/work.js";
// The services (archipel.v1alpha2): one request and one response message per call
// (PropagationPolicyServiceApplyRequest {object} -> PropagationPolicyServiceApplyResponse
// {object}, ...), and watch events typed by the EventType enum.
export * as service from "./gen/archipel/v1alpha2/service.js";
// Bootstrap tokens, agents' certificate signing requests and their registration.
export * as registration from "./gen/archipel/v1alpha2/registration.js";
// The first version of the services (archipel.v1alpha1), still served for existing
// callers: shared GetRequest/ListRequest/WatchRequest, objects as Apply's request and
// Get's response, event types as strings.
export * as serviceV1alpha1 from "./gen/archipel/v1alpha1/service.js";

/** The metadata every admin call carries: `authorization: Bearer <token>`. */
export function bearer(token: string): Metadata {
  const metadata = new Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

/** A unary call of a generated client as a promise:
 * `await unary((done) => client.apply(request, metadata, done))`. */
export function unary<T>(
  call: (done: (error: Error | null, response: T) => void) => unknown,
): Promise<T> {
  return new Promise((resolve, reject) => {
    call((error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** The events of a server stream, as an async iterator; breaking out of the loop
 * cancels the call. */
export async function* events<T>(stream: ClientReadableStream<T>): AsyncGenerator<T> {
  try {
    for await (const event of stream) {
      yield event as T;
    }
  } finally {
    stream.cancel();
  }
}
