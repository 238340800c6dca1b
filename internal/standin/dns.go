package standin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// DNSTTL is the TTL of every answer, low like a headless Service's records.
const DNSTTL = 1

// DNSServer is a real DNS server on 127.0.0.1 (UDP and TCP on the same port),
// authoritative for the names given to SetA. Unknown names get NXDOMAIN; a
// known name without records of the asked type gets an empty NOERROR answer.
type DNSServer struct {
	udp, tcp *dns.Server
	addr     string
	queries  atomic.Int64

	mu      sync.RWMutex
	records map[string][]netip.Addr // by fully qualified, lower-case name
	asked   map[string]int64        // A questions by fully qualified, lower-case name

	stopOnce sync.Once
	stopErr  error
}

// StartDNS starts a DNSServer on 127.0.0.1 with an ephemeral port.
func StartDNS() (*DNSServer, error) {
	s := &DNSServer{records: map[string][]netip.Addr{}, asked: map[string]int64{}}
	var lastErr error
	for attempt := 0; attempt < groupAttempts; attempt++ {
		pc, l, err := listenUDPAndTCP()
		if err == nil {
			return s, s.serve(pc, l)
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, fmt.Errorf("standin: starting DNS server: %w", lastErr)
}

// listenUDPAndTCP opens a UDP socket on 127.0.0.1:0 and a TCP listener on the
// same port.
func listenUDPAndTCP() (net.PacketConn, net.Listener, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		_ = pc.Close()
		return nil, nil, err
	}
	return pc, l, nil
}

// serve starts both servers and waits until they are listening.
func (s *DNSServer) serve(pc net.PacketConn, l net.Listener) error {
	s.addr = pc.LocalAddr().String()
	var started sync.WaitGroup
	started.Add(2)
	handler := dns.HandlerFunc(s.answer)
	s.udp = &dns.Server{PacketConn: pc, Handler: handler, NotifyStartedFunc: started.Done}
	s.tcp = &dns.Server{Listener: l, Handler: handler, NotifyStartedFunc: started.Done}
	errs := make(chan error, 2)
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		go func() { errs <- srv.ActivateAndServe() }()
	}
	ready := make(chan struct{})
	go func() { started.Wait(); close(ready) }()
	select {
	case <-ready:
		return nil
	case err := <-errs:
		_ = pc.Close()
		_ = l.Close()
		return err
	case <-time.After(10 * time.Second):
		_ = pc.Close()
		_ = l.Close()
		return errors.New("standin: DNS server did not start within 10s")
	}
}

// Addr returns the server address (host:port), usable as the authority of a
// dns://authority/host:port target.
func (s *DNSServer) Addr() string { return s.addr }

// Queries returns how many questions were answered.
func (s *DNSServer) Queries() int64 { return s.queries.Load() }

// Lookups returns how many A questions were asked for name: one per lookup
// of its IPv4 and IPv6 addresses (the AAAA question travels with it).
func (s *DNSServer) Lookups(name string) int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.asked[dns.CanonicalName(name)]
}

// SetA makes name resolve to ips (IPv4 addresses answer A, IPv6 addresses
// answer AAAA queries). With no ips the name exists but has no records.
// It panics on an address that does not parse: that is a bug in the test.
func (s *DNSServer) SetA(name string, ips ...string) {
	addrs := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		addrs[i] = netip.MustParseAddr(ip)
	}
	s.mu.Lock()
	s.records[dns.CanonicalName(name)] = addrs
	s.mu.Unlock()
}

// Remove makes name unknown again (NXDOMAIN).
func (s *DNSServer) Remove(name string) {
	s.mu.Lock()
	delete(s.records, dns.CanonicalName(name))
	s.mu.Unlock()
}

// Stop shuts both servers down; it is safe to call more than once.
func (s *DNSServer) Stop() error {
	s.stopOnce.Do(func() {
		s.stopErr = errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
	})
	return s.stopErr
}

// answer serves one DNS message.
func (s *DNSServer) answer(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	addrs, ok := s.records[name]
	if q.Qtype == dns.TypeA {
		s.asked[name]++
	}
	s.mu.Unlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
		_ = w.WriteMsg(m)
		return
	}
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: DNSTTL}
		switch {
		case q.Qtype == dns.TypeA && a.Is4():
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case q.Qtype == dns.TypeAAAA && a.Is6():
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	_ = w.WriteMsg(m)
}
