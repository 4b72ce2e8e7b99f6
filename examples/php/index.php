<?php
// Served by PHP's built-in server on $PORT (the php runtime starts it).
header('Content-Type: text/plain; charset=utf-8');
echo 'Hello from PHP ' . PHP_VERSION . "\n";
