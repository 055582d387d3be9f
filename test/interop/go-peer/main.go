// go-peer: a stand-in for KubeSphere's Go tower agent and proxy, for interoperability tests.
// It speaks wire protocol v1 with the libraries the Go tower uses (gorilla/websocket and
// golang.org/x/crypto/ssh) and behaves as the Go tower does on the wire: the agent requests the
// kubesphere-v1 subprotocol, identifies as SSH-kubesphere-v1-client, authenticates with an empty
// password, sends `config` and reads only the reply payload; the proxy upgrades only for
// kubesphere-v1 without echoing it, identifies as SSH-kubesphere-v1-server with a fresh ECDSA P-256
// host key, expects `config` first within 10 s, answers `ping`, and opens `kubesphere` channels
// whose extra data is the raw host:port.
//
//	go-peer agent -proxy-server ws://127.0.0.1:8080 -name alpha -token T -upstream 127.0.0.1:6443 [-ca F -cert F -key F | -bearer T]
//	go-peer proxy -listen 127.0.0.1:8080 -name alpha -token T -forward 127.0.0.1:7000
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

// config has the field names and types of the Go tower's agent.Config: JSON keys as Go writes them.
type config struct {
	Version           string
	Name              string
	Token             string
	KubernetesSvcHost string
	KubeSphereSvcHost string
	CertData          []byte
	KeyData           []byte
	CAData            []byte
	BearerToken       []byte
}

// wsConn carries a byte stream over WebSocket binary messages, one message per Write.
type wsConn struct {
	*websocket.Conn
	r io.Reader
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func pipe(a io.ReadWriteCloser, b io.ReadWriteCloser) {
	var once sync.Once
	closeBoth := func() { a.Close(); b.Close() }
	go func() { io.Copy(a, b); once.Do(closeBoth) }()
	io.Copy(b, a)
	once.Do(closeBoth)
}

func readFile(path string) []byte {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return b
}

func agent(args []string) {
	fs := flag.NewFlagSet("agent", flag.ExitOnError)
	server := fs.String("proxy-server", "ws://127.0.0.1:8080", "")
	name := fs.String("name", "", "")
	token := fs.String("token", "", "")
	upstream := fs.String("upstream", "", "")
	ca := fs.String("ca", "", "")
	cert := fs.String("cert", "", "")
	key := fs.String("key", "", "")
	bearer := fs.String("bearer", "", "")
	fs.Parse(args)

	dialer := websocket.Dialer{HandshakeTimeout: 45 * time.Second, Subprotocols: []string{"kubesphere-v1"}}
	ws, _, err := dialer.Dial(*server, http.Header{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	conn, chans, reqs, err := ssh.NewClientConn(&wsConn{Conn: ws}, "", &ssh.ClientConfig{
		User:            "",
		Auth:            []ssh.AuthMethod{ssh.Password("")},
		ClientVersion:   "SSH-kubesphere-v1-client",
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         30 * time.Second,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "handshake:", err)
		os.Exit(1)
	}
	c := config{Version: "go-peer", Name: *name, Token: *token, KubernetesSvcHost: *upstream, KubeSphereSvcHost: "ks-apiserver.kubesphere-system.svc:80",
		CAData: readFile(*ca), CertData: readFile(*cert), KeyData: readFile(*key)}
	if *bearer != "" {
		c.BearerToken = []byte(*bearer)
	}
	payload, _ := json.Marshal(c)
	// as the Go tower agent: only the reply payload tells an error
	_, configErr, err := conn.SendRequest("config", true, payload)
	if err != nil {
		fmt.Fprintln(os.Stderr, "config:", err)
		os.Exit(1)
	}
	if len(configErr) > 0 {
		fmt.Fprintln(os.Stderr, string(configErr))
		os.Exit(1)
	}
	fmt.Println("connected")
	go ssh.DiscardRequests(reqs)
	go func() {
		for {
			time.Sleep(time.Second)
			if _, _, err := conn.SendRequest("ping", true, nil); err != nil {
				return
			}
		}
	}()
	for ch := range chans {
		remote := string(ch.ExtraData())
		stream, chReqs, err := ch.Accept()
		if err != nil {
			continue
		}
		go ssh.DiscardRequests(chReqs)
		go func() {
			tcp, err := net.Dial("tcp", remote)
			if err != nil {
				stream.Close()
				return
			}
			pipe(stream, tcp)
		}()
	}
	conn.Wait()
	fmt.Println("disconnected")
}

func proxy(args []string) {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "")
	name := fs.String("name", "", "")
	token := fs.String("token", "", "")
	forward := fs.String("forward", "127.0.0.1:0", "")
	fs.Parse(args)

	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	sshConfig := &ssh.ServerConfig{
		ServerVersion:    "SSH-kubesphere-v1-server",
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) { return nil, nil },
	}
	sshConfig.AddHostKey(signer)

	var mu sync.Mutex
	var current ssh.Conn
	var upstream string
	fl, err := net.Listen("tcp", *forward)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		for {
			tcp, err := fl.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conn, target := current, upstream
			mu.Unlock()
			if conn == nil {
				tcp.Close()
				continue
			}
			go func() {
				ch, reqs, err := conn.OpenChannel("kubesphere", []byte(target))
				if err != nil {
					tcp.Close()
					return
				}
				go ssh.DiscardRequests(reqs)
				pipe(ch, tcp)
			}()
		}
	}()

	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	handler := func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" || r.Header.Get("Sec-WebSocket-Protocol") != "kubesphere-v1" {
			if r.URL.Path == "/health" {
				w.Write([]byte("OK\n"))
				return
			}
			w.WriteHeader(http.StatusNotFound)
			return
		}
		ws, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conn, _, reqs, err := ssh.NewServerConn(&wsConn{Conn: ws}, sshConfig)
		if err != nil {
			fmt.Println("handshake failed:", err)
			return
		}
		var req *ssh.Request
		select {
		case req = <-reqs:
		case <-time.After(10 * time.Second):
			conn.Close()
			return
		}
		var c config
		if req == nil || req.Type != "config" || json.Unmarshal(req.Payload, &c) != nil {
			if req != nil {
				req.Reply(false, []byte("expecting config request"))
			}
			conn.Close()
			return
		}
		if c.Name != *name || c.Token != *token {
			req.Reply(false, []byte("Unauthorized agent"))
			conn.Close()
			return
		}
		req.Reply(true, nil)
		mu.Lock()
		current, upstream = conn, c.KubernetesSvcHost
		mu.Unlock()
		fmt.Printf("agent connected %s upstream=%s\n", c.Name, c.KubernetesSvcHost)
		go func() {
			for r := range reqs {
				if r.Type == "ping" {
					r.Reply(true, nil)
				} else if r.WantReply {
					r.Reply(false, nil)
				}
			}
		}()
		conn.Wait()
		fmt.Println("agent disconnected")
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// the host key is fresh at every start, as the Go tower's; printed so that a test can pin it
	fmt.Printf("serving %s forward=%s fingerprint=%s\n", l.Addr(), fl.Addr(), ssh.FingerprintSHA256(signer.PublicKey()))
	http.Serve(l, http.HandlerFunc(handler))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go-peer agent|proxy ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "agent":
		agent(os.Args[2:])
	case "proxy":
		proxy(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: go-peer agent|proxy ...")
		os.Exit(2)
	}
}
