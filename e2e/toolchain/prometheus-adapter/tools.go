//go:build tools

// Package prometheusadapter pins the adapter that serves Prometheus series as custom metrics.
package prometheusadapter

import _ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
