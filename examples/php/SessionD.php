<?php
/**
 * SessionD — erply-sessiond's client for PHP jobs (PHP 7.4+ with the curl
 * extension: Debian's php-cli and php-curl).
 *
 * The job never logs in to Erply: it asks the daemon for the session over
 * its Unix socket (CURLOPT_UNIX_SOCKET_PATH), either to call Erply itself or
 * to let the daemon call Erply for it.
 *
 *     require __DIR__ . '/SessionD.php';
 *     $sd = new SessionD();                       // $SESSIOND_SOCKET or the default socket
 *     $reply = $sd->call('pos', ['request' => 'getProducts', 'recordsOnPage' => 20]);
 *     $reply = $sd->proxy('pos', ['request' => 'getProducts', 'recordsOnPage' => 20]);
 *
 * call() sends the request to Erply with the daemon's key and, when Erply
 * answers 1054/1055 (session expired or unknown), reports that key to the
 * daemon (which logs in again only if it is still its current key, once for
 * all callers) and re-sends once with the new key. proxy() hands the request
 * to the daemon's /api route, which adds the key and does the same re-send
 * itself. Both return Erply's decoded reply, errors inside it included (look
 * at $reply['status']['errorCode']); they throw SessionDError when the daemon
 * refuses (unknown credential, no valid session yet: see retryAfter) and
 * RuntimeException when nothing answers.
 *
 * Secrets travel only in request bodies, never in URLs or command lines.
 */
final class SessionDError extends RuntimeException
{
    /** @var int HTTP status of the daemon's answer (404, 403, 503, ...) */
    public $status;
    /** @var string the daemon's stable error code, e.g. "no_valid_session" */
    public $errorCode;
    /** @var int seconds the daemon asked to wait (Retry-After), 0 if none */
    public $retryAfter;

    public function __construct(int $status, string $errorCode, string $message, int $retryAfter)
    {
        parent::__construct("erply-sessiond answered $status $errorCode: $message");
        $this->status = $status;
        $this->errorCode = $errorCode;
        $this->retryAfter = $retryAfter;
    }
}

final class SessionD
{
    /** The daemon's socket unless SESSIOND_SOCKET says otherwise. */
    public const DEFAULT_SOCKET = '/run/erply-sessiond/sessiond.sock';

    /** @var bool whether the last call() re-sent after a 1054/1055 */
    public $lastCallResent = false;

    /** @var string */
    private $socket;
    /** @var int */
    private $timeout;

    /**
     * @param string|null $socket  the daemon's socket (default: $SESSIOND_SOCKET, else DEFAULT_SOCKET)
     * @param int         $timeout seconds for each request, to the daemon or to Erply
     */
    public function __construct(?string $socket = null, int $timeout = 60)
    {
        if ($socket === null || $socket === '') {
            $env = getenv('SESSIOND_SOCKET');
            $socket = ($env !== false && $env !== '') ? $env : self::DEFAULT_SOCKET;
        }
        $this->socket = $socket;
        $this->timeout = $timeout;
    }

    /** The credential's current session key. */
    public function key(string $name): string
    {
        return rtrim($this->local('GET', '/v1/sessions/' . rawurlencode($name) . '/key', null), "\n");
    }

    /**
     * The credential's current session: sessionKey, clientCode, apiURL,
     * expiresAt, expiresIn, user fields, token, identityToken.
     */
    public function session(string $name): array
    {
        return self::json($this->local('GET', '/v1/sessions/' . rawurlencode($name), null));
    }

    /**
     * Reports that Erply refused $staleKey (1054/1055). The daemon logs in
     * again only if $staleKey is still its current key, and answers the
     * session to use now either way.
     */
    public function invalidate(string $name, string $staleKey): array
    {
        return self::json($this->local('POST', '/v1/sessions/' . rawurlencode($name) . '/invalidate', ['key' => $staleKey]));
    }

    /**
     * Calls Erply directly with the daemon's session: $params is the call's
     * form without clientCode and sessionKey. On 1054/1055 it reports the
     * key and re-sends once with the new one ($lastCallResent tells).
     */
    public function call(string $name, array $params): array
    {
        $this->lastCallResent = false;
        $s = $this->session($name);
        $reply = $this->erply($s, $params);
        $code = (int)($reply['status']['errorCode'] ?? 0);
        if ($code === 1054 || $code === 1055) {
            $s = $this->invalidate($name, $s['sessionKey']);
            $this->lastCallResent = true;
            $reply = $this->erply($s, $params);
        }
        return $reply;
    }

    /**
     * Calls Erply through the daemon's proxy route: the daemon adds
     * clientCode and sessionKey, and re-sends once after 1054/1055 itself.
     */
    public function proxy(string $name, array $params): array
    {
        return self::json($this->local('POST', '/v1/sessions/' . rawurlencode($name) . '/api', $params));
    }

    /** POSTs one call to Erply's API with the session's key. */
    private function erply(array $s, array $params): array
    {
        $form = $params + ['clientCode' => $s['clientCode'], 'sessionKey' => $s['sessionKey'], 'sendContentType' => '1'];
        $ch = curl_init($s['apiURL']);
        curl_setopt_array($ch, [
            CURLOPT_POST => true,
            CURLOPT_POSTFIELDS => http_build_query($form),
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT => $this->timeout,
            CURLOPT_FOLLOWLOCATION => false, // a redirect would carry the key elsewhere
            CURLOPT_HTTPHEADER => ['Content-Type: application/x-www-form-urlencoded'],
        ]);
        $body = curl_exec($ch);
        $status = (int)curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        $err = curl_error($ch);
        curl_close($ch);
        if ($body === false) {
            throw new RuntimeException("Erply did not answer: $err");
        }
        if ($status !== 200) {
            throw new RuntimeException("Erply answered HTTP $status");
        }
        return self::json($body);
    }

    /** One request to the daemon; returns the body of a 2xx answer. */
    private function local(string $method, string $path, ?array $form): string
    {
        $retryAfter = 0;
        $ch = curl_init('http://localhost' . $path);
        $opts = [
            CURLOPT_UNIX_SOCKET_PATH => $this->socket,
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT => $this->timeout,
            CURLOPT_HEADERFUNCTION => function ($ch, $line) use (&$retryAfter) {
                if (stripos($line, 'Retry-After:') === 0) {
                    $retryAfter = (int)trim(substr($line, 12));
                }
                return strlen($line);
            },
        ];
        if ($form !== null) {
            $opts[CURLOPT_POSTFIELDS] = http_build_query($form);
            $opts[CURLOPT_HTTPHEADER] = ['Content-Type: application/x-www-form-urlencoded'];
        }
        curl_setopt_array($ch, $opts);
        $body = curl_exec($ch);
        $status = (int)curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        $err = curl_error($ch);
        curl_close($ch);
        if ($body === false) {
            throw new RuntimeException("erply-sessiond at {$this->socket} did not answer: $err");
        }
        if ($status < 200 || $status > 299) {
            $e = json_decode($body, true);
            if (is_array($e) && isset($e['error'])) {
                throw new SessionDError($status, $e['error'], (string)($e['message'] ?? ''), $retryAfter);
            }
            throw new SessionDError($status, 'http_' . $status, trim($body), $retryAfter);
        }
        return $body;
    }

    private static function json(string $body): array
    {
        $v = json_decode($body, true);
        if (!is_array($v)) {
            throw new RuntimeException('not a JSON object: ' . json_last_error_msg());
        }
        return $v;
    }
}
