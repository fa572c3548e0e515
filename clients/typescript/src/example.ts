// Propagates a ConfigMap to one member cluster through Archipel's API:
//
//   node dist/example.js --server HOST:PORT --token-file FILE --ca-file CA \
//       --name NAME --namespace NAMESPACE --cluster CLUSTER [--timeout SECONDS]
//
// It applies the ConfigMap as a resource template, applies a PropagationPolicy that
// places it on CLUSTER (tolerating every taint, so that a cluster whose agent has not
// connected yet qualifies), watches the template's PropagationBinding until it is
// Scheduled, and lists the member clusters, through the services of archipel.v1alpha2
// (which carry the objects of archipel.v1alpha1). TLS, trusting the control plane's CA
// (--ca-file; the system's roots without it); the admin token goes in the
// "authorization: Bearer <token>" metadata of every call.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";

import { bearer, events, unary } from "./index.js";
import type { MemberCluster } from "./gen/archipel/v1alpha1/cluster.js";
import { PropagationPolicy } from "./gen/archipel/v1alpha1/policy.js";
import type { PropagationBinding } from "./gen/archipel/v1alpha1/work.js";
import {
  EventType,
  MemberClusterServiceClient,
  MemberClusterServiceListRequest,
  type MemberClusterServiceListResponse,
  PropagationBindingServiceClient,
  PropagationBindingServiceWatchRequest,
  PropagationPolicyServiceApplyRequest,
  type PropagationPolicyServiceApplyResponse,
  PropagationPolicyServiceClient,
  ResourceTemplateServiceApplyRequest,
  type ResourceTemplateServiceApplyResponse,
  ResourceTemplateServiceClient,
} from "./gen/archipel/v1alpha2/service.js";

const { values: args } = parseArgs({
  options: {
    server: { type: "string" },
    "token-file": { type: "string" },
    "ca-file": { type: "string" },
    name: { type: "string" },
    namespace: { type: "string" },
    cluster: { type: "string" },
    timeout: { type: "string", default: "60" },
  },
  strict: true,
});

function required(option: "server" | "token-file" | "name" | "namespace" | "cluster"): string {
  const value = args[option];
  if (!value) {
    console.error(
      "usage: example --server HOST:PORT --token-file FILE --name NAME" +
        " --namespace NAMESPACE --cluster CLUSTER [--timeout SECONDS]",
    );
    console.error(`missing --${option}`);
    process.exit(2);
  }
  return value;
}

const server = required("server");
const name = required("name");
const namespace = required("namespace");
const clusterName = required("cluster");
const token = readFileSync(required("token-file"), "utf8").trim();
const timeoutSeconds = Number(args.timeout);
const metadata = bearer(token);
const caFile = args["ca-file"];
const tls = credentials.createSsl(caFile ? readFileSync(caFile) : null);

const templates = new ResourceTemplateServiceClient(server, tls);
const policies = new PropagationPolicyServiceClient(server, tls);
const bindings = new PropagationBindingServiceClient(server, tls);
const clusters = new MemberClusterServiceClient(server, tls);

function closeAll(): void {
  for (const client of [templates, policies, bindings, clusters]) {
    client.close();
  }
}

/** The binding is the template's, and the scheduler has placed it. */
function scheduled(binding: PropagationBinding | undefined): binding is PropagationBinding {
  const resource = binding?.spec?.resource;
  if (
    !binding ||
    resource?.kind !== "ConfigMap" ||
    resource.namespace !== namespace ||
    resource.name !== name
  ) {
    return false;
  }
  return (binding.status?.conditions ?? []).some(
    (condition) => condition.type === "Scheduled" && condition.status === "True",
  );
}

async function waitUntilScheduled(): Promise<PropagationBinding> {
  // An empty resourceVersion: the current bindings arrive first as ADDED events, so a
  // binding scheduled before the watch began is seen too.
  const stream = bindings.watch(
    PropagationBindingServiceWatchRequest.fromPartial({ namespace }),
    metadata,
  );
  for await (const event of events(stream)) {
    if (event.type !== EventType.EVENT_TYPE_DELETED && scheduled(event.object)) {
      return event.object;
    }
  }
  throw new Error("the watch of PropagationBindings ended");
}

async function listClusters(): Promise<MemberCluster[]> {
  const found: MemberCluster[] = [];
  let request = MemberClusterServiceListRequest.fromPartial({ limit: 100 });
  for (;;) {
    const page = await unary<MemberClusterServiceListResponse>((done) =>
      clusters.list(request, metadata, done),
    );
    found.push(...page.items);
    if (!page.continue) {
      return found;
    }
    request = { ...request, continue: page.continue };
  }
}

async function main(): Promise<void> {
  // (a) The ConfigMap, as a resource template: the manifest is the object itself.
  const { object: template } = await unary<ResourceTemplateServiceApplyResponse>((done) =>
    templates.apply(
      ResourceTemplateServiceApplyRequest.fromPartial({
        object: {
          manifest: {
            apiVersion: "v1",
            kind: "ConfigMap",
            metadata: { name, namespace },
            data: { greeting: "hello from the TypeScript client" },
          },
        },
      }),
      metadata,
      done,
    ),
  );
  const applied = template?.manifest?.["metadata"] as { resourceVersion?: string } | undefined;
  console.log(`applied: ConfigMap ${namespace}/${name} at ${applied?.resourceVersion ?? "?"}`);

  // (b) A PropagationPolicy that places it on the cluster.
  const { object: policy } = await unary<PropagationPolicyServiceApplyResponse>((done) =>
    policies.apply(
      PropagationPolicyServiceApplyRequest.fromPartial({
        object: PropagationPolicy.fromPartial({
          apiVersion: "policy.archipel.io/v1alpha1",
          kind: "PropagationPolicy",
          metadata: { name: `${name}-to-${clusterName}`, namespace },
          spec: {
            resourceSelectors: [{ apiVersion: "v1", kind: "ConfigMap", name }],
            placement: {
              clusterAffinity: { clusterNames: [clusterName] },
              // A cluster whose agent has not connected is tainted: schedule there anyway.
              clusterTolerations: [{ operator: "Exists" }],
            },
          },
        }),
      }),
      metadata,
      done,
    ),
  );
  console.log(`policy: ${policy?.metadata?.namespace}/${policy?.metadata?.name}`);

  // (c) The template's binding, once the scheduler has placed it.
  const binding = await waitUntilScheduled();
  const targets = (binding.spec?.clusters ?? []).map((target) => target.name);
  console.log(`scheduled: ${binding.metadata?.name} -> ${targets.join(",")}`);

  // (d) The member clusters.
  for (const member of await listClusters()) {
    console.log(`cluster: ${member.metadata?.name}`);
  }
}

const timer = setTimeout(() => {
  console.error(`timed out after ${timeoutSeconds}s`);
  closeAll();
  process.exit(1);
}, timeoutSeconds * 1000);

main()
  .then(() => {
    clearTimeout(timer);
    closeAll();
  })
  .catch((error: unknown) => {
    clearTimeout(timer);
    const grpcError = error as Partial<ServiceError>;
    if (grpcError.code !== undefined && grpcError.code in status) {
      console.error(`error: ${status[grpcError.code]}: ${grpcError.details ?? grpcError.message}`);
    } else {
      console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
    }
    closeAll();
    process.exit(1);
  });
