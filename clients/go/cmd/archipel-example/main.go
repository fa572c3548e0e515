// Command archipel-example shows the Go client end to end: it applies a ConfigMap
// template and a PropagationPolicy that places it on one member cluster, waits for the
// scheduler to bind it there, and lists the member clusters. It calls the services of
// archipel.v1alpha2 (package v1alpha2), which carry the objects of archipel.v1alpha1
// (package v1alpha1).
//
//	archipel-example --server 127.0.0.1:7443 --token-file admin-token \
//	    --ca-file .local/pki/ca/ca.crt --name demo --namespace default --cluster member1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	v1alpha1 "github.com/archipel-io/archipel/clients/go/archipel/v1alpha1"
	v1alpha2 "github.com/archipel-io/archipel/clients/go/archipel/v1alpha2"
)

func main() {
	server := flag.String("server", "127.0.0.1:7443", "the control plane's gRPC address (host:port)")
	tokenFile := flag.String("token-file", "", "file holding the admin token")
	caFile := flag.String("ca-file", "", "the control plane's CA bundle (default: the system's roots)")
	name := flag.String("name", "archipel-example", "name of the ConfigMap to propagate")
	namespace := flag.String("namespace", "default", "namespace of the ConfigMap and its policy")
	cluster := flag.String("cluster", "", "member cluster to place the ConfigMap on")
	timeout := flag.Duration("timeout", time.Minute, "how long to wait for the binding to be scheduled")
	flag.Parse()
	if *tokenFile == "" || *cluster == "" {
		fmt.Fprintln(os.Stderr, "archipel-example: --token-file and --cluster are required")
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*server, *tokenFile, *caFile, *name, *namespace, *cluster, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "archipel-example: %v\n", err)
		os.Exit(1)
	}
}

func run(server, tokenFile, caFile, name, namespace, cluster string, timeout time.Duration) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	// The control plane authenticates every call by its "authorization" metadata.
	ctx := metadata.AppendToOutgoingContext(
		context.Background(), "authorization", "Bearer "+strings.TrimSpace(string(token)))
	// TLS, trusting the control plane's CA: it serves TLS unless started with --insecure.
	tls := credentials.NewTLS(nil)
	if caFile != "" {
		if tls, err = credentials.NewClientTLSFromFile(caFile, ""); err != nil {
			return err
		}
	}
	conn, err := grpc.NewClient(server, grpc.WithTransportCredentials(tls))
	if err != nil {
		return err
	}
	defer conn.Close()

	// (a) The template: any Kubernetes object, sent as a google.protobuf.Struct.
	manifest, err := structpb.NewStruct(map[string]any{
		"apiVersion": "v1",
		"kind":       "ConfigMap",
		"metadata":   map[string]any{"name": name, "namespace": namespace},
		"data":       map[string]any{"greeting": "hello from Go"},
	})
	if err != nil {
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	templates := v1alpha2.NewResourceTemplateServiceClient(conn)
	if _, err := templates.Apply(callCtx, &v1alpha2.ResourceTemplateServiceApplyRequest{
		Object: &v1alpha1.ResourceTemplate{Manifest: manifest},
	}); err != nil {
		return fmt.Errorf("applying the template: %w", err)
	}
	fmt.Printf("applied: ConfigMap %s/%s\n", namespace, name)

	// (b) The policy: this ConfigMap goes to --cluster, tolerating its taints (a
	// cluster whose agent is not connected is tainted).
	policy := &v1alpha1.PropagationPolicy{
		Metadata: &v1alpha1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: &v1alpha1.PropagationSpec{
			ResourceSelectors: []*v1alpha1.ResourceSelector{
				{ApiVersion: "v1", Kind: "ConfigMap", Namespace: namespace, Name: name},
			},
			Placement: &v1alpha1.Placement{
				ClusterAffinity:    &v1alpha1.ClusterAffinity{ClusterNames: []string{cluster}},
				ClusterTolerations: []*v1alpha1.Toleration{{Operator: "Exists"}},
			},
		},
	}
	policies := v1alpha2.NewPropagationPolicyServiceClient(conn)
	if _, err := policies.Apply(
		callCtx, &v1alpha2.PropagationPolicyServiceApplyRequest{Object: policy}); err != nil {
		return fmt.Errorf("applying the policy: %w", err)
	}
	fmt.Printf("applied: PropagationPolicy %s/%s\n", namespace, name)

	// (c) Wait for the scheduler. A watch without a resourceVersion first sends every
	// current binding as ADDED, then the changes, so nothing is missed.
	binding, err := waitScheduled(ctx, conn, namespace, name, timeout)
	if err != nil {
		return err
	}
	targets := make([]string, 0, len(binding.GetSpec().GetClusters()))
	for _, target := range binding.GetSpec().GetClusters() {
		targets = append(targets, target.GetName())
	}
	fmt.Printf("scheduled: %s -> %s\n", binding.GetMetadata().GetName(), strings.Join(targets, ","))

	// (d) The member clusters, page by page.
	clusters := v1alpha2.NewMemberClusterServiceClient(conn)
	page := ""
	for {
		list, err := clusters.List(
			callCtx, &v1alpha2.MemberClusterServiceListRequest{Limit: 100, Continue: page})
		if err != nil {
			return fmt.Errorf("listing clusters: %w", err)
		}
		for _, item := range list.GetItems() {
			fmt.Printf("cluster: %s\n", item.GetMetadata().GetName())
		}
		if page = list.GetContinue(); page == "" {
			return nil
		}
	}
}

// waitScheduled watches the bindings of namespace until the one made from ConfigMap
// name has a Scheduled condition with status True.
func waitScheduled(
	ctx context.Context, conn *grpc.ClientConn, namespace, name string, timeout time.Duration,
) (*v1alpha1.PropagationBinding, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stream, err := v1alpha2.NewPropagationBindingServiceClient(conn).Watch(
		ctx, &v1alpha2.PropagationBindingServiceWatchRequest{Namespace: namespace})
	if err != nil {
		return nil, fmt.Errorf("watching bindings: %w", err)
	}
	for {
		event, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil, fmt.Errorf("binding of ConfigMap %s/%s not scheduled within %s", namespace, name, timeout)
			}
			return nil, fmt.Errorf("watching bindings: %w", err)
		}
		binding := event.GetObject()
		if event.GetType() == v1alpha2.EventType_EVENT_TYPE_DELETED || binding == nil {
			continue
		}
		resource := binding.GetSpec().GetResource()
		if resource.GetKind() != "ConfigMap" || resource.GetNamespace() != namespace || resource.GetName() != name {
			continue
		}
		for _, condition := range binding.GetStatus().GetConditions() {
			if condition.GetType() == "Scheduled" && condition.GetStatus() == "True" {
				return binding, nil
			}
		}
	}
}
