<?php
/**
 * A back-office job that makes one Erply call with erply-sessiond's session.
 *
 *     php job.php call|proxy CREDENTIAL REQUEST [name=value ...]
 *
 * "call" sends the request to Erply itself (re-sending once after
 * 1054/1055), "proxy" through the daemon's /api route. It prints one JSON
 * line: Erply's responseStatus and errorCode, the number of records, and
 * whether the call was re-sent with a new key. It exits 0 when Erply
 * answered "ok", 1 when Erply answered an error, 2 when the daemon refused
 * (its code on standard error), 3 when nothing answered.
 * The socket is $SESSIOND_SOCKET or /run/erply-sessiond/sessiond.sock.
 */
require __DIR__ . '/SessionD.php';

if ($argc < 4 || !in_array($argv[1], ['call', 'proxy'], true)) {
    fwrite(STDERR, "usage: php job.php call|proxy CREDENTIAL REQUEST [name=value ...]\n");
    exit(64);
}
[, $via, $credential, $request] = $argv;
$params = ['request' => $request];
foreach (array_slice($argv, 4) as $arg) {
    [$k, $v] = array_pad(explode('=', $arg, 2), 2, '');
    $params[$k] = $v;
}

$sd = new SessionD();
try {
    $reply = $via === 'call' ? $sd->call($credential, $params) : $sd->proxy($credential, $params);
} catch (SessionDError $e) {
    fwrite(STDERR, "job: {$e->errorCode}: {$e->getMessage()}\n");
    exit(2);
} catch (RuntimeException $e) {
    fwrite(STDERR, "job: {$e->getMessage()}\n");
    exit(3);
}

$status = $reply['status'] ?? [];
echo json_encode([
    'via' => $via,
    'responseStatus' => $status['responseStatus'] ?? null,
    'errorCode' => (int)($status['errorCode'] ?? 0),
    'records' => is_array($reply['records'] ?? null) ? count($reply['records']) : 0,
    'resent' => $sd->lastCallResent,
]), "\n";
exit(($status['responseStatus'] ?? '') === 'ok' ? 0 : 1);
