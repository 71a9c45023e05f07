// The pod sandbox's init process, built static so the image needs nothing else.
module marfleet.dev/e2e/pause

go 1.22
