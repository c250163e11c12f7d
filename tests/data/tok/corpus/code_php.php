<?php
declare(strict_types=1);

namespace App\Http;

final class Router
{
    /** @var array<string, callable> */
    private array $routes = [];

    public function get(string $path, callable $h): self
    {
        $this->routes["GET {$path}"] = $h;
        return $this;
    }

    public function dispatch(string $method, string $uri): string
    {
        $key = sprintf('%s %s', strtoupper($method), parse_url($uri, PHP_URL_PATH) ?? '/');
        return isset($this->routes[$key]) ? ($this->routes[$key])() : "404 Not Found";
    }
}
echo (new Router())->get('/', fn() => 'home')->dispatch('get', '/?q=1'), PHP_EOL;
