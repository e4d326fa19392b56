<?php
// Real PHP backend for stickyd's end-to-end tests (tests/real_backends.rs), run with
//   INSTANCE=php-1 SESSION_DIR=/tmp/x php -S 127.0.0.1:PORT -t tests/backends/php
// Counts views in a native PHP session (cookie "PHPSESSID", file storage) and
// answers {"instance", "views", "session"} as JSON. Each instance should get its
// own SESSION_DIR so that instances never share session storage.
declare(strict_types=1);

$sessionDir = getenv('SESSION_DIR');
if ($sessionDir !== false && $sessionDir !== '') {
    session_save_path($sessionDir);
}
session_name('PHPSESSID');
if (!session_start()) {
    http_response_code(500);
    header('Content-Type: application/json');
    echo json_encode(['error' => 'session_start failed']), "\n";
    exit;
}

$_SESSION['views'] = ($_SESSION['views'] ?? 0) + 1;
$views = $_SESSION['views'];
$id = session_id();
session_write_close();

$instance = getenv('INSTANCE');
header('Content-Type: application/json');
echo json_encode([
    'instance' => $instance === false ? 'php' : $instance,
    'views' => $views,
    'session' => $id,
]);
