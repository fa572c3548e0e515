"""The Archipel agent: runs in each member cluster, pulls its works over one gRPC stream,
applies them with server-side apply and reports status back."""
