// Listens on $PORT, as every Slipway app must.
const http = require("http");
const port = Number(process.env.PORT || 8080);
http
  .createServer((request, response) => {
    response.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
    response.end(`Hello from Node.js ${process.version}\n`);
  })
  .listen(port, () => console.log(`listening on ${port}`));
