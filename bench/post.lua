-- wrk: POST the body of a file (arg 1) to the target URL, with the bearer token from TOKEN.
function init(args)
  local f = assert(io.open(args[1], "rb")); wrk.body = f:read("*a"); f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/fhir+json"
  wrk.headers["Accept"] = "application/fhir+json"
  wrk.headers["Prefer"] = "return=minimal"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")
end
