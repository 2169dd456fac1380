-- wrk: GET a random path from a file (arg 1) under a prefix (arg 2), with the bearer token
-- from the TOKEN environment variable.
local paths, prefix, token = {}, "", os.getenv("TOKEN") or ""
function init(args)
  prefix = args[2] or ""
  for line in io.lines(args[1]) do if #line > 0 then paths[#paths + 1] = line end end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end
function request()
  return wrk.format("GET", prefix .. paths[math.random(#paths)],
    {["Accept"] = "application/fhir+json", ["Authorization"] = "Bearer " .. token})
end
