module github.com/meshca/meshca

go 1.26.0
