wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"method":"GET","route":"/","query":{"application":"perf"}}'
