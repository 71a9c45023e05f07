//go:build tools

// Package helm pins the helm command used to lint, render and install the marfleet chart.
package helm

import _ "helm.sh/helm/v4/cmd/helm"
