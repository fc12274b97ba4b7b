package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "zguard test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS: a certificate turns TLS on for the same listener without a
// rebind, the gateway's own https origin passes the Origin check, and
// removing the certificate turns TLS off again.
func TestTLS(t *testing.T) {
	h, _ := newHarness(t, "", bcrypt.MinCost, nil)
	addr := h.g.boundAddrs()[0]
	certFile, keyFile, pool := selfSigned(t, h.dir)
	cfg := h.cfg
	cfg.TLSCert, cfg.TLSKey = certFile, keyFile
	if err := h.g.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.g.boundAddrs(); len(got) != 1 || got[0] != addr {
		t.Fatalf("listeners %v after enabling TLS, want the same %s", got, addr)
	}
	if !h.g.Status().TLS {
		t.Error("status says TLS off")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	code, _, _ := do(t, hc, "GET", "https://"+addr+"/", nil, "")
	if code != http.StatusUnauthorized {
		t.Errorf("https GET without credentials = %d, want 401", code)
	}
	code, _, _ = do(t, hc, "POST", "https://"+addr+"/prompt", map[string]string{"Origin": "https://" + addr, "Authorization": basic("alice", alicePW)}, "{}")
	if code == http.StatusForbidden || code == http.StatusUnauthorized {
		t.Errorf("POST with the gateway's https origin = %d, want it past the Origin check", code)
	}
	code, _, _ = do(t, hc, "POST", "https://"+addr+"/prompt", map[string]string{"Origin": "http://" + addr, "Authorization": basic("alice", alicePW)}, "{}")
	if code != http.StatusForbidden {
		t.Errorf("POST with the http (not https) origin = %d, want 403", code)
	}
	if code := rawGet(t, addr, "/", nil); code == http.StatusUnauthorized {
		t.Error("plain HTTP answered by the TLS listener")
	}
	bad := cfg
	bad.TLSKey = filepath.Join(h.dir, "missing.key")
	if err := h.g.Apply(context.Background(), bad); err == nil {
		t.Fatal("Apply with a missing key succeeded")
	}
	if code, _, _ := do(t, hc, "GET", "https://"+addr+"/", nil, ""); code != http.StatusUnauthorized {
		t.Errorf("failed Apply broke TLS: %d", code)
	}
	if err := h.g.Apply(context.Background(), h.cfg); err != nil {
		t.Fatal(err)
	}
	if code := rawGet(t, addr, "/", nil); code != http.StatusUnauthorized {
		t.Errorf("plain HTTP after removing the certificate = %d, want 401", code)
	}
}
