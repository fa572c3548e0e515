// Build module for protoc-gen-go, which generates clients/go's protobuf messages.
module archipel.invalid/build/protoc-gen-go

go 1.26.7

tool google.golang.org/protobuf/cmd/protoc-gen-go

require google.golang.org/protobuf v1.36.12 // indirect
