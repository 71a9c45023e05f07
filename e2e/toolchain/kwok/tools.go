//go:build tools

// Package kwok pins the KWOK command that simulates the local cluster's nodes and pods.
package kwok

import _ "sigs.k8s.io/kwok/cmd/kwok"
