package standin

import (
	"fmt"
	"net/http"
	"strconv"
)

// Cluster is a set of distributors as a gateway sees them behind a headless
// Service: n Distributors served over gRPC (dskit's httpgrpc server) on
// GroupIP(0), GroupIP(1), ... sharing one port, and a DNS server that
// answers Name with their addresses.
type Cluster struct {
	Name         string
	Distributors []*Distributor
	Servers      []*GRPCServer
	DNS          *DNSServer
	// Port is the gRPC port every server listens on.
	Port string
}

// StartCluster starts n distributors named "distributor-1"... and a DNS
// server listing all of them under name. Stop stops everything.
func StartCluster(name string, n int, opts ...GRPCOption) (*Cluster, error) {
	return startCluster(name, n, nil, opts...)
}

// StartZones starts one Cluster of n distributors per name (a zone each,
// with its own port) and ONE DNS server that answers every name, like the
// per-zone headless Services of a Mimir cluster. Stopping any of them stops
// the shared DNS server too.
func StartZones(names []string, n int, opts ...GRPCOption) ([]*Cluster, error) {
	var zones []*Cluster
	var dns *DNSServer
	for _, name := range names {
		c, err := startCluster(name, n, dns, opts...)
		if err != nil {
			for _, z := range zones {
				z.Stop()
			}
			return nil, err
		}
		dns = c.DNS
		zones = append(zones, c)
	}
	return zones, nil
}

// startCluster starts a Cluster whose names dns answers, or a new DNS
// server when dns is nil.
func startCluster(name string, n int, dns *DNSServer, opts ...GRPCOption) (*Cluster, error) {
	c := &Cluster{Name: name, DNS: dns}
	handlers := make([]http.Handler, n)
	for i := range handlers {
		d := NewDistributor(fmt.Sprintf("distributor-%d", i+1))
		c.Distributors = append(c.Distributors, d)
		handlers[i] = d
	}
	servers, err := StartGRPCGroup(handlers, opts...)
	if err != nil {
		return nil, err
	}
	c.Servers = servers
	c.Port = strconv.Itoa(servers[0].Port())
	if c.DNS == nil {
		if c.DNS, err = StartDNS(); err != nil {
			c.Stop()
			return nil, err
		}
	}
	c.List(n)
	return c, nil
}

// List makes the DNS server answer with the first n distributors only.
func (c *Cluster) List(n int) {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	c.ListOnly(idx...)
}

// ListOnly makes the DNS server answer with the distributors at idx.
func (c *Cluster) ListOnly(idx ...int) {
	ips := make([]string, len(idx))
	for i, x := range idx {
		ips[i] = GroupIP(x)
	}
	c.DNS.SetA(c.Name, ips...)
}

// Target is the gateway URL of the cluster: dns://<dns server>/<name>:<port>.
func (c *Cluster) Target() string {
	return "dns://" + c.DNS.Addr() + "/" + c.Name + ":" + c.Port
}

// Addr is the gRPC address of distributor i.
func (c *Cluster) Addr(i int) string { return GroupIP(i) + ":" + c.Port }

// Requests returns each distributor's request count.
func (c *Cluster) Requests() []int64 {
	out := make([]int64, len(c.Distributors))
	for i, d := range c.Distributors {
		out[i] = d.Requests()
	}
	return out
}

// Stop stops the servers and the DNS server; it is safe to call twice.
func (c *Cluster) Stop() {
	for _, s := range c.Servers {
		s.Stop()
	}
	if c.DNS != nil {
		_ = c.DNS.Stop()
	}
}
