//go:build tools

// Package versitygw pins the versitygw command (its S3 gateway checks SigV4 keys).
package versitygw

import _ "github.com/versity/versitygw/cmd/versitygw"
