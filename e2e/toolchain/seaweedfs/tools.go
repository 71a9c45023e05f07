//go:build tools

// Package seaweedfs pins the `weed` command (its S3 gateway is the tests' object store).
package seaweedfs

import _ "github.com/seaweedfs/seaweedfs/weed"
