// Command coredns is CoreDNS with the plugins the real node's Corefile uses and no others.
// Plugins register themselves when imported; their order in a server comes from CoreDNS's
// own directive list, so it is the same as in the full build.
package main

import (
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
