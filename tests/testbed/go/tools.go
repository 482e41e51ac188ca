//go:build tools

// Package tools pins the modules whose binaries and CRDs the test bed uses, so that
// `go mod tidy` keeps them and go.sum covers them.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
	_ "istio.io/api/networking/v1"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/gateway-api/apis/v1"
)
