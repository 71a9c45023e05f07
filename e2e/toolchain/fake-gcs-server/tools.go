//go:build tools

// Package fakegcsserver pins the fake-gcs-server command (the tests' GCS JSON API server).
package fakegcsserver

import _ "github.com/fsouza/fake-gcs-server"
